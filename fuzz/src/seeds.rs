//! The seed corpora, from the shapes the project's tests use. Written to
//! `fuzz/corpus/<target>/` by
//! `PORTCULLIS_WRITE_SEEDS=1 cargo test --manifest-path fuzz/Cargo.toml --test seeds`
//! (without the variable the test checks that the committed seeds are
//! these, and runs each through its target).

use portcullis_proto::framework::PayloadForm;
use portcullis_proto::link::encode_frame;
use portcullis_proto::pb::client::{GroupRequest, LoginRequest, ResumeRequest, SendToGroup, SendToUser, SendToUsers};
use portcullis_proto::pb::link::{self as pb, link_frame::Kind};
use portcullis_proto::token::{self, Claims};
use portcullis_proto::{cmd, Codec, Envelope};

use crate::kcp;
use crate::netstack::{self as ns, ADVANCE_MS, PATCH};
use crate::packets::{self as p, flags, Ip};
use crate::targets::{RESUME_KEY, TOKEN_SECRET};

/// A seed: target, file name, bytes.
pub type Seed = (&'static str, String, Vec<u8>);

fn login_token(secret: &[u8], user: &str) -> String {
    token::sign(secret, &Claims { uid: user.into(), dev: "pc".into(), exp: u64::MAX, role: String::new() })
}

/// A client's first frames: LOGIN as `alice` (the netstack/link config's
/// secret), JOIN_GROUP `room`, a business request (cmd 1000, seq 3) that
/// the core forwards to the game server as request 1.
pub fn client_session() -> Vec<Envelope<'static>> {
    let form = PayloadForm::Protobuf;
    let login =
        form.encode_to_vec(&LoginRequest { token: login_token(ns::SECRET.as_bytes(), "alice"), ..Default::default() });
    let join = form.encode_to_vec(&GroupRequest { group: "room".into() });
    vec![
        Envelope::new(cmd::LOGIN, 1, 0, &[]).with_payload(login),
        Envelope::new(cmd::JOIN_GROUP, 2, 0, &[]).with_payload(join),
        Envelope::new(1000, 3, 0, b"hello game").with_route_key(b"room"),
    ]
}

trait WithPayload {
    fn with_payload(self, payload: Vec<u8>) -> Envelope<'static>;
}

impl WithPayload for Envelope<'static> {
    fn with_payload(mut self, payload: Vec<u8>) -> Envelope<'static> {
        self.payload = payload.into();
        self
    }
}

/// Every framework payload of a session, in `form`.
fn framework_envelopes(form: PayloadForm) -> Vec<Envelope<'static>> {
    let mut v = vec![
        Envelope::new(cmd::LOGIN, 1, 0, &[]).with_payload(
            form.encode_to_vec(&LoginRequest {
                token: login_token(ns::SECRET.as_bytes(), "alice"),
                ..Default::default()
            }),
        ),
        Envelope::new(cmd::JOIN_GROUP, 2, 0, &[])
            .with_payload(form.encode_to_vec(&GroupRequest { group: "room".into() })),
        Envelope::new(cmd::SEND_TO_USER, 3, 0, &[])
            .with_payload(form.encode_to_vec(&SendToUser { user_id: "bob".into(), payload: vec![0xff, 0, 1] })),
        Envelope::new(cmd::SEND_TO_USERS, 4, 0, &[]).with_payload(
            form.encode_to_vec(&SendToUsers { user_ids: vec!["bob".into(), "carol".into()], payload: b"hi".to_vec() }),
        ),
        Envelope::new(cmd::SEND_TO_GROUP, 5, 0, &[]).with_payload(form.encode_to_vec(&SendToGroup {
            group: "room".into(),
            payload: b"base64:not really".to_vec(),
            include_self: true,
        })),
        Envelope::new(cmd::RESUME, 6, 0, &[]).with_payload(form.encode_to_vec(&ResumeRequest {
            resume_token: token::resume_token(&[3; 32], 1, 0),
            last_server_seq: 4,
            ..Default::default()
        })),
    ];
    v.push(Envelope { ack: 9, ..Envelope::new(cmd::ACK, 7, 0, b"") });
    v
}

/// The samples of the codec tests (`proto/src/codec/mod.rs`).
fn codec_samples() -> Vec<Envelope<'static>> {
    vec![
        Envelope::default(),
        Envelope::new(1001, 7, 0, b"hello world"),
        Envelope::new(cmd::LOGIN, u32::MAX, 3, b"{\"token\":\"x\"}"),
        Envelope::new(2000, 1, 2, &[0, 159, 146, 150, b'\n', b'\\', 255]).with_route_key(b"room-1"),
        Envelope::new(1000, 2, 0, b"").with_route_key(b""),
        Envelope::new(1000, 3, 0, b"line\nbreak and \\ back\r").with_route_key(b"-"),
        Envelope { server_seq: 7, ..Envelope::new(1000, 4, 2, b"sequenced") },
        Envelope { server_seq: u64::MAX, ack: 5, ..Envelope::new(cmd::ACK, 0, 0, b"") },
    ]
}

fn envelope_seeds(out: &mut Vec<Seed>) {
    for (i, codec) in Codec::ALL.into_iter().enumerate() {
        let mut samples = vec![i as u8];
        for env in codec_samples() {
            codec.encode(&env, &mut samples);
        }
        out.push(("envelope", format!("{codec}-samples"), samples));
        let mut session = vec![i as u8];
        for env in framework_envelopes(codec.payload_form()) {
            codec.encode(&env, &mut session);
        }
        out.push(("envelope", format!("{codec}-framework"), session));
    }
    // Hand-typed lines, as in the README.
    let text = b"\x03LOGIN 1 0 - {\"token\":\"abc\"}\r\nJOIN_GROUP 2 0 - {\"group\":\"room:lobby\"}\n1000 3 0/5/4 room\\s1 hello \\x00echo\n";
    out.push(("envelope", "text-typed".into(), text.to_vec()));
    let json = b"\x02{\"cmd\":1001,\"seq\":1,\"flags\":0,\"payload\":\"hi\",\"route_key\":\"room-1\"}\n{\"cmd\":2,\"payload_b64\":\"AAEC\",\"ack\":3}\n";
    out.push(("envelope", "json-typed".into(), json.to_vec()));
}

fn link_seeds(out: &mut Vec<Seed>) {
    let kinds = vec![
        (
            "reply",
            Kind::Reply(pb::Reply {
                session_id: 1,
                cmd: 1000,
                seq: 3,
                payload: b"pong".to_vec(),
                error: 0,
                error_message: String::new(),
                request_id: 1,
                silent: false,
            }),
        ),
        (
            "reply-error",
            Kind::Reply(pb::Reply {
                session_id: 1,
                cmd: 1000,
                seq: 3,
                payload: vec![],
                error: 2,
                error_message: "nope".into(),
                request_id: 1,
                silent: true,
            }),
        ),
        (
            "push-session",
            Kind::PushToSession(pb::PushToSession {
                session_id: 1,
                cmd: 1500,
                payload: b"x".to_vec(),
                unreliable: false,
            }),
        ),
        (
            "push-user",
            Kind::PushToUser(pb::PushToUser {
                user_id: "alice".into(),
                cmd: 1501,
                payload: b"y".to_vec(),
                unreliable: true,
            }),
        ),
        (
            "push-group",
            Kind::PushToGroup(pb::PushToGroup {
                group: "room".into(),
                cmd: 1502,
                payload: b"z".to_vec(),
                unreliable: false,
            }),
        ),
        ("broadcast", Kind::Broadcast(pb::Broadcast { cmd: 1503, payload: b"w".to_vec(), unreliable: true })),
        ("pong", Kind::Pong(pb::Pong { nonce: 1 })),
        ("status", Kind::Status(pb::Status { draining: true })),
    ];
    let mut all = Vec::new();
    for (name, kind) in kinds {
        let mut one = Vec::new();
        encode_frame(kind, &mut one);
        all.extend_from_slice(&one);
        out.push(("link_frame", name.into(), one));
    }
    out.push(("link_frame", "all-kinds".into(), all));
}

fn token_seeds(out: &mut Vec<Seed>) {
    let valid = Claims { uid: "alice".into(), dev: "ios".into(), exp: u64::MAX, role: String::new() };
    let mut t = vec![0];
    t.extend_from_slice(token::sign(TOKEN_SECRET, &valid).as_bytes());
    out.push(("tokens", "login-valid".into(), t));
    let mut t = vec![0];
    t.extend_from_slice(token::sign(TOKEN_SECRET, &Claims { exp: 1000, ..valid.clone() }).as_bytes());
    out.push(("tokens", "login-expired".into(), t));
    let mut t = vec![1];
    t.extend_from_slice(token::resume_token(RESUME_KEY, 42, 7).as_bytes());
    out.push(("tokens", "resume-valid".into(), t));
    let mut t = vec![2];
    t.extend_from_slice(br#"{"uid":"alice","dev":"pc","exp":1900000000}"#);
    out.push(("tokens", "claims-json".into(), t));
    let mut t = vec![2];
    t.extend_from_slice(br#"{"uid":"b\u00f6b","exp":18446744073709551615}"#);
    out.push(("tokens", "claims-json-escaped".into(), t));
    let mut t = vec![3];
    t.extend_from_slice(&u64::MAX.to_le_bytes());
    t.extend_from_slice(b"alice\0android");
    out.push(("tokens", "claims-bytes".into(), t));
}

fn config_seeds(out: &mut Vec<Seed>) {
    let shipped = include_str!("../../config/portcullis.toml");
    out.push(("config", "portcullis.toml".into(), shipped.as_bytes().to_vec()));
    let harness = include_str!("../../config/harness.toml");
    out.push(("config", "harness.toml".into(), harness.as_bytes().to_vec()));
    out.push(("config", "netstack.toml".into(), ns::config_text().into_bytes()));
    let good = "[[listeners]]\nbind = \"127.0.0.1:7000\"\n[auth]\nkind = \"token\"\nsecret = \"0123456789abcdef\"\n\
                [[services]]\nname = \"game\"\nservers = [\"127.0.0.1:9000\"]\n[[routes]]\ncommands = [1000, 1999]\nservice = \"game\"\n";
    out.push(("config", "minimal.toml".into(), good.as_bytes().to_vec()));
    let dpdk = format!("{good}[dpdk]\neal_args = [\"--no-huge\"]\naddresses = [\"10.77.0.1/24\"]\nqueues = 2\n");
    out.push(("config", "dpdk.toml".into(), dpdk.into_bytes()));
}

/// A netstack record: `ctl`, frame.
fn rec(out: &mut Vec<u8>, ctl: u8, frame: &[u8]) {
    out.push(ctl);
    out.extend_from_slice(&(frame.len() as u16).to_be_bytes());
    out.extend_from_slice(frame);
}

const MS1: u8 = 1;

/// A TCP session to `port` from `client`: SYN, ACK, data, FIN, with
/// sequence numbers patched by the harness.
fn tcp_session(out: &mut Vec<u8>, client: Ip, gw: Ip, sport: u16, port: u16, data: &[&[u8]]) {
    let seg = |fl: u8, payload: &[u8]| p::tcp(&[], client, gw, sport, port, 1000, 0, fl, payload);
    rec(out, MS1, &seg(flags::SYN, b""));
    rec(out, MS1 | PATCH, &seg(flags::ACK, b""));
    for d in data {
        rec(out, MS1 | PATCH, &seg(flags::ACK | flags::PSH, d));
        rec(out, 2 | PATCH, &seg(flags::ACK, b""));
    }
    rec(out, MS1 | PATCH, &seg(flags::ACK | flags::FIN, b""));
    rec(out, 2 | PATCH, &seg(flags::ACK, b""));
}

fn netstack_seeds(out: &mut Vec<Seed>) {
    assert_eq!(ADVANCE_MS[usize::from(MS1)], 1);
    let (c4, g4, c6, g6) = (Ip::V4(p::CLIENT4), Ip::V4(p::GW4), Ip::V6(p::CLIENT6), Ip::V6(p::GW6));
    let arp = p::arp_request(p::CLIENT_MAC, p::CLIENT4, p::GW4);
    let ns6 = p::neighbour_solicitation(p::CLIENT_MAC, p::CLIENT6, p::GW6);

    // Protobuf listener over IPv4: login, heartbeats, a routed request.
    let mut frames = Vec::new();
    for env in client_session() {
        Codec::Protobuf.encode(&env, &mut frames);
    }
    let mut hb = Vec::new();
    for seq in 4..7 {
        Codec::Protobuf.encode(&Envelope::new(cmd::HEARTBEAT, seq, 0, b""), &mut hb);
    }
    for (verify, name) in [(1u8, "tcp4-protobuf-session-checksums"), (0, "tcp4-protobuf-session")] {
        let mut s = vec![verify];
        rec(&mut s, MS1, &arp);
        tcp_session(&mut s, c4, g4, 40_000, ns::PORTS[0], &[&frames, &hb]);
        out.push(("netstack", name.into(), s));
    }

    // Text listener over IPv6.
    let token = login_token(ns::SECRET.as_bytes(), "bob");
    let text = format!(
        "LOGIN 1 0 - {{\"token\":\"{token}\"}}\nJOIN_GROUP 2 0 - {{\"group\":\"room\"}}\n\
         SEND_TO_GROUP 3 0 - {{\"group\":\"room\",\"payload\":\"hi\",\"include_self\":true}}\n1000 4 0 room hello\nLOGOUT 5\n"
    );
    let mut s = vec![1];
    rec(&mut s, MS1, &ns6);
    tcp_session(&mut s, c6, g6, 40_001, ns::PORTS[1], &[text.as_bytes()]);
    out.push(("netstack", "tcp6-text-session".into(), s));

    // Two connections, then silence until the heartbeat deadline.
    let mut s = vec![0];
    rec(&mut s, MS1, &arp);
    tcp_session(&mut s, c4, g4, 40_002, ns::PORTS[0], &[&frames]);
    rec(&mut s, MS1, &p::tcp(&[], c4, g4, 40_003, ns::PORTS[1], 5000, 0, flags::SYN, b""));
    rec(&mut s, MS1 | PATCH, &p::tcp(&[], c4, g4, 40_003, ns::PORTS[1], 5001, 0, flags::ACK, b""));
    rec(&mut s, 7, &p::tcp(&[], c4, g4, 40_003, ns::PORTS[1], 5001, 0, flags::ACK, b""));
    out.push(("netstack", "tcp4-two-clients-timeout".into(), s));

    // The backlog (4) full of half-open connections: the fifth SYN is
    // answered with a SYN cookie, and that player completes the handshake
    // and logs in.
    let mut s = vec![0];
    rec(&mut s, MS1, &arp);
    for i in 0..4u16 {
        rec(&mut s, crate::netstack::QUEUE, &p::tcp(&[], c4, g4, 51_000 + i, ns::PORTS[0], 7, 0, flags::SYN, b""));
    }
    rec(&mut s, MS1, &p::tcp(&[], c4, g4, 51_000, ns::PORTS[0], 7, 0, flags::SYN, b""));
    tcp_session(&mut s, c4, g4, 51_004, ns::PORTS[0], &[&frames]);
    out.push(("netstack", "syn-cookie-session".into(), s));

    // A SYN flood past the backlog, a RST, UDP echo, ICMP echo.
    let mut s = vec![1];
    rec(&mut s, MS1, &arp);
    rec(&mut s, MS1, &ns6);
    for i in 0..6u16 {
        rec(&mut s, crate::netstack::QUEUE, &p::tcp(&[], c4, g4, 50_000 + i, ns::PORTS[0], 7, 0, flags::SYN, b""));
    }
    rec(&mut s, MS1, &p::tcp(&[], c4, g4, 50_000, ns::PORTS[0], 8, 0, flags::RST, b""));
    rec(&mut s, MS1, &p::udp(&[], c4, g4, 40_000, ns::UDP_ECHO, b"echo me"));
    rec(&mut s, MS1, &p::udp(&[], c6, g6, 40_000, ns::UDP_ECHO, b"echo me too"));
    rec(&mut s, MS1, &p::udp(&[], c4, g4, 40_000, 7101, b"nobody"));
    rec(&mut s, MS1, &p::ping(c4, g4, 0x1234, 1, b"portcullis ping"));
    rec(&mut s, MS1, &p::ping(c6, g6, 0x1234, 2, b"portcullis ping"));
    out.push(("netstack", "flood-udp-icmp".into(), s));
}

/// A KCP PUSH segment (`sn`, `data`); its conversation id is left for the
/// harness to write ([`kcp::CONV`]).
fn kcp_push(sn: u32, data: &[u8]) -> Vec<u8> {
    let mut s = Vec::with_capacity(24 + data.len());
    s.extend_from_slice(&1u32.to_le_bytes()); // conv: patched
    s.extend_from_slice(&[81, 0]); // cmd PUSH, frg 0
    s.extend_from_slice(&256u16.to_le_bytes()); // wnd
    s.extend_from_slice(&0u32.to_le_bytes()); // ts
    s.extend_from_slice(&sn.to_le_bytes());
    s.extend_from_slice(&0u32.to_le_bytes()); // una
    s.extend_from_slice(&(data.len() as u32).to_le_bytes());
    s.extend_from_slice(data);
    s
}

fn kcp_seeds(out: &mut Vec<Seed>) {
    use portcullis_proto::kcp::Control;
    assert_eq!(kcp::ADVANCE_MS[usize::from(MS1)], 1);
    let hello = Control::Hello { nonce: 7 }.to_vec();
    let mut frames = Vec::new();
    for env in client_session() {
        Codec::Protobuf.encode(&env, &mut frames);
    }
    // Handshake, then LOGIN, JOIN_GROUP and a routed request in two
    // segments (one datagram each), a window probe, then CLOSE.
    let (a, b) = frames.split_at(frames.len() / 2);
    let mut s = Vec::new();
    rec(&mut s, MS1, &hello);
    rec(&mut s, MS1 | kcp::CONNECT, b"");
    rec(&mut s, MS1 | kcp::CONV, &kcp_push(0, a));
    rec(&mut s, MS1 | kcp::CONV, &kcp_push(1, b));
    let mut probe = kcp_push(2, b"");
    probe[4] = 83;
    rec(&mut s, 2 | kcp::CONV, &probe);
    rec(&mut s, 3 | kcp::CONV, &Control::Close { conv: 1 }.to_vec());
    out.push(("kcp", "handshake-login-close".into(), s));

    // Two clients, one in two segments of one datagram, the other out of
    // order; then silence until the dead-peer timeout.
    let mut hb = Vec::new();
    for seq in 1..4 {
        Codec::Protobuf.encode(&Envelope::new(cmd::HEARTBEAT, seq, 0, b""), &mut hb);
    }
    let mut s = Vec::new();
    for client in [0u8, 1] {
        rec(&mut s, MS1 | client << 3, &hello);
        rec(&mut s, MS1 | client << 3 | kcp::CONNECT, b"");
    }
    let (x, y) = hb.split_at(5);
    rec(&mut s, MS1 | kcp::CONV, &[kcp_push(0, x), kcp_push(1, y)].concat());
    rec(&mut s, MS1 | 1 << 3 | kcp::CONV, &kcp_push(1, y));
    rec(&mut s, MS1 | 1 << 3 | kcp::CONV, &kcp_push(0, x));
    out.push(("kcp", "two-clients-dead-peers".into(), s));

    // Bad datagrams: a short HELLO, a forged CONNECT, an unknown
    // conversation, garbage.
    let mut s = Vec::new();
    rec(&mut s, 0, &hello[..40]);
    rec(&mut s, 0, &Control::Connect { nonce: 1, conv: 5, cookie: [0; 20] }.to_vec());
    rec(&mut s, 0, &kcp_push(0, b"x"));
    rec(&mut s, 0, &[1, 2, 3]);
    rec(&mut s, 2 << 3, &hello);
    out.push(("kcp", "bad-datagrams".into(), s));
}

fn xdp_seeds(out: &mut Vec<Seed>) {
    let (c4, g4, c6, g6) = (Ip::V4(p::CLIENT4), Ip::V4(p::GW4), Ip::V6(p::CLIENT6), Ip::V6(p::GW6));
    let blocked = Ip::V4([10, 99, 0, 1]);
    let allowed6 = Ip::V6([0xfd, 0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5]);
    let syn = |vlans: &[u16], src: Ip, dst: Ip| p::tcp(vlans, src, dst, 40_000, 7000, 1, 0, flags::SYN, b"");
    let mut frames = vec![
        ("udp4-gateway", p::udp(&[], c4, g4, 40_000, 7000, b"hello")),
        ("udp4-other", p::udp(&[], c4, g4, 40_000, 9999, b"hello")),
        ("udp6-gateway", p::udp(&[], c6, g6, 40_000, 7000, b"hello")),
        ("syn4-gateway", syn(&[], c4, g4)),
        ("syn6-gateway", syn(&[], c6, g6)),
        ("ack4-gateway", p::tcp(&[], c4, g4, 40_000, 7000, 2, 1, flags::ACK, b"data")),
        ("syn4-ssh", p::tcp(&[], c4, g4, 40_000, 22, 1, 0, flags::SYN, b"")),
        ("udp4-blocked", p::udp(&[], blocked, g4, 40_000, 7000, b"x")),
        ("syn6-allowed", syn(&[], allowed6, g6)),
        ("vlan-udp4", p::udp(&[100], c4, g4, 40_000, 7000, b"tagged")),
        ("qinq-syn6", syn(&[100, 200], c6, g6)),
        ("arp", p::arp_request(p::CLIENT_MAC, p::CLIENT4, p::GW4)),
        ("icmp6-ns", p::neighbour_solicitation(p::CLIENT_MAC, p::CLIENT6, p::GW6)),
    ];
    // IPv4 later fragment: offset 185 (×8 bytes), no ports.
    let mut frag = p::udp(&[], c4, g4, 40_000, 7000, b"fragment");
    frag[20..22].copy_from_slice(&185u16.to_be_bytes());
    frames.push(("udp4-later-fragment", frag));
    // IPv6 with a hop-by-hop header, then UDP to the gateway port.
    let mut hbh = p::udp(&[], c6, g6, 40_000, 7000, b"ext");
    let udp_part = hbh.split_off(54);
    hbh[20] = 0; // next header: hop-by-hop
    hbh.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]); // -> UDP, PadN
    hbh.extend_from_slice(&udp_part);
    let plen = (hbh.len() - 54) as u16;
    hbh[18..20].copy_from_slice(&plen.to_be_bytes());
    frames.push(("udp6-hop-by-hop", hbh));
    // IPv6 fragment header, later fragment.
    let mut f6 = p::udp(&[], c6, g6, 40_000, 7000, b"frag6");
    let rest = f6.split_off(54);
    f6[20] = 44;
    f6.extend_from_slice(&[17, 0, 0x05, 0x00, 0, 0, 0, 1]);
    f6.extend_from_slice(&rest);
    frames.push(("udp6-later-fragment", f6));
    // Truncated IPv4 header.
    let mut t = p::udp(&[], c4, g4, 40_000, 7000, b"");
    t.truncate(14 + 12);
    frames.push(("ipv4-truncated", t));
    for (name, f) in frames {
        out.push(("xdp", name.into(), f));
    }
}

/// Every seed of every target.
pub fn all() -> Vec<Seed> {
    let mut out = Vec::new();
    envelope_seeds(&mut out);
    link_seeds(&mut out);
    token_seeds(&mut out);
    config_seeds(&mut out);
    netstack_seeds(&mut out);
    kcp_seeds(&mut out);
    websocket_seeds(&mut out);
    xdp_seeds(&mut out);
    out
}

/// A masked client frame.
fn ws_frame(out: &mut Vec<u8>, first: u8, payload: &[u8]) {
    let mask = [0x11, 0x22, 0x33, 0x44];
    out.push(first);
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// `websocket`: a session per codec (LOGIN, a fragmented request with a
/// ping between its fragments, a close), one over the 64-byte limit, one
/// unmasked frame, and one with the request sent by the seed itself.
fn websocket_seeds(out: &mut Vec<Seed>) {
    for (i, codec) in Codec::ALL.into_iter().enumerate() {
        let (text, opcode) =
            if codec.framing() == portcullis_proto::Framing::Lines { (true, 0x1) } else { (false, 0x2) };
        let mut data = vec![i as u8 | 8 | (3 << 4)];
        for env in client_session() {
            let mut framed = Vec::new();
            codec.encode(&env, &mut framed);
            let body = if text { &framed[..framed.len() - 1] } else { &framed[4..] };
            let half = body.len() / 2;
            ws_frame(&mut data, opcode, &body[..half]);
            ws_frame(&mut data, 0x89, b"ping");
            ws_frame(&mut data, 0x80, &body[half..]);
        }
        ws_frame(&mut data, 0x88, &1000u16.to_be_bytes());
        out.push(("websocket", format!("{codec}-session"), data));
    }
    let mut big = vec![4 | 8];
    ws_frame(&mut big, 0x82, &[7; 65]);
    out.push(("websocket", "over-the-limit".into(), big));
    let mut unmasked = vec![8, 0x82, 0x03];
    unmasked.extend_from_slice(b"abc");
    out.push(("websocket", "unmasked".into(), unmasked));
    let mut own = vec![0xf0];
    own.extend_from_slice(crate::websocket::UPGRADE);
    ws_frame(&mut own, 0x82, b"x");
    out.push(("websocket", "own-upgrade".into(), own));
}
