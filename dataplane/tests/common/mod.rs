//! What the root tests of the kernel-bypass backends share: a sample game
//! server on the harness's gateway side, and players on the real Linux TCP
//! stack speaking the protobuf codec by hand. (Each test file uses some.)
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use portcullis_dataplane::RunningGateway;
use portcullis_harness::Harness;
use portcullis_proto::pb::client::{LoginReply, LoginRequest};
use portcullis_proto::token::{sign, Claims};
use portcullis_proto::{cmd, flags, Codec, Envelope};
use portcullis_sample_game_server::{SampleGame, ECHO};

/// Sends one envelope.
pub fn send(s: &mut TcpStream, env: &Envelope<'_>) {
    let mut out = Vec::new();
    Codec::Protobuf.encode(env, &mut out);
    s.write_all(&out).unwrap();
}

/// The next envelope from the gateway (`buf` keeps what follows it).
pub fn recv(s: &mut TcpStream, buf: &mut Vec<u8>) -> Envelope<'static> {
    loop {
        if let Some((r, used)) = Codec::Protobuf.framing().next_frame(buf, 1 << 20).unwrap() {
            let env = Codec::Protobuf.decode(&buf[r]).unwrap().into_owned();
            buf.drain(..used);
            return env;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).expect("an answer within the read timeout");
        assert!(n > 0, "the gateway closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The sample game server on the gateway side's loopback, served by the
/// returned runtime; and its address.
pub fn start_game_server(h: &Harness) -> (tokio::runtime::Runtime, SocketAddr) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = h.in_gateway(|| std::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    listener.set_nonblocking(true).unwrap();
    let game_addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let _ = portcullis_backend_sdk::serve(listener, SampleGame::default()).await;
    });
    (rt, game_addr)
}

/// Waits (bounded) until the gateway has a link to the game server.
pub fn wait_for_links(gateway: &RunningGateway) {
    let ready = Instant::now() + Duration::from_secs(10);
    while gateway.status().iter().map(|w| w.links_up).sum::<usize>() == 0 {
        assert!(Instant::now() < ready, "never linked to the game server");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A player's TCP connection to `addr` (in the calling thread's namespace),
/// logged in as `user` with a token signed with `secret`.
pub fn logged_in(addr: SocketAddr, secret: &str, user: &str) -> (TcpStream, Vec<u8>) {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("TCP through the dataplane");
    log_in(s, secret, user)
}

/// Like [`logged_in`], from source address `source`. The connect may take
/// TCP's SYN retransmissions (1, 3 and 7 s) — a SYN lost in a flood is not
/// a failure.
pub fn logged_in_from(source: IpAddr, addr: SocketAddr, secret: &str, user: &str) -> (TcpStream, Vec<u8>) {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
    socket
        .connect_timeout(&addr.into(), Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("TCP from {source} through the dataplane: {e}"));
    log_in(socket.into(), secret, user)
}

fn log_in(mut s: TcpStream, secret: &str, user: &str) -> (TcpStream, Vec<u8>) {
    // Generous: a login may wait for TCP retransmissions through a flood.
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = Vec::new();
    let token =
        sign(secret.as_bytes(), &Claims { uid: user.into(), dev: "pc".into(), exp: u64::MAX, role: String::new() });
    let login = Codec::Protobuf.payload_form().encode_to_vec(&LoginRequest { token, ..Default::default() });
    send(&mut s, &Envelope::new(cmd::LOGIN, 1, 0, &login));
    let reply = recv(&mut s, &mut buf);
    assert_eq!((reply.cmd, reply.flags), (cmd::LOGIN, flags::RESPONSE));
    let r: LoginReply = Codec::Protobuf.payload_form().decode(&reply.payload).unwrap();
    assert_eq!(r.user_id, user);
    (s, buf)
}

/// A player logs in as `user`, echoes ten times through the game server
/// and logs out; returns the echoes answered.
pub fn echo_session(addr: SocketAddr, secret: &str, user: &str) -> usize {
    let (mut s, mut buf) = logged_in(addr, secret, user);
    let echoed = (2..12).filter(|&seq| echo(&mut s, &mut buf, seq, user)).count();
    send(&mut s, &Envelope::new(cmd::LOGOUT, 20, 0, b""));
    assert_eq!(recv(&mut s, &mut buf).cmd, cmd::LOGOUT);
    echoed
}

/// One echo through the game server; whether it came back intact.
pub fn echo(s: &mut TcpStream, buf: &mut Vec<u8>, seq: u32, user: &str) -> bool {
    let payload = format!("echo {user}/{seq}");
    send(s, &Envelope::new(ECHO, seq, 0, payload.as_bytes()));
    let back = recv(s, buf);
    (back.seq, &*back.payload) == (seq, payload.as_bytes())
}
