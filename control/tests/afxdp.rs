//! The AF_XDP backend on the veth harness (root): the XDP filter redirects
//! the gateway port into the AF_XDP socket, the userspace stack terminates
//! TCP, and players in the players' namespace use the real Linux TCP stack
//! to log in and echo through the sample game server, over IPv4 and IPv6
//! (the stack learns their link-layer addresses from their frames).
#![cfg(feature = "afxdp")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use portcullis_dataplane::filter::Filter;
use portcullis_dataplane::io::kernel::RunningGateway;
use portcullis_dataplane::Config;
use portcullis_harness::{Harness, GATEWAY_IFACE, GATEWAY_V4, GATEWAY_V6};
use portcullis_proto::pb::client::{LoginReply, LoginRequest};
use portcullis_proto::token::{sign, Claims};
use portcullis_proto::{cmd, flags, Codec, Envelope};
use portcullis_sample_game_server::{SampleGame, ECHO};

const SECRET: &str = "afxdp-test-secret-0123456789";

fn send(s: &mut TcpStream, env: &Envelope<'_>) {
    let mut out = Vec::new();
    Codec::Protobuf.encode(env, &mut out);
    s.write_all(&out).unwrap();
}

fn recv(s: &mut TcpStream, buf: &mut Vec<u8>) -> Envelope<'static> {
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
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = h.in_gateway(|| std::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    listener.set_nonblocking(true).unwrap();
    let game_addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let _ = portcullis_backend_sdk::serve(listener, SampleGame::default()).await;
    });

    let text = format!(
        "[[listeners]]\nbind = \"{GATEWAY_V4}:7000\"\n[auth]\nkind = \"token\"\nsecret = \"{SECRET}\"\n\
         [afxdp]\ninterface = \"{GATEWAY_IFACE}\"\naddresses = [\"{GATEWAY_V4}/24\", \"{GATEWAY_V6}/64\"]\npin_dir = \"{}\"\n\
         [[services]]\nname = \"game\"\nservers = [\"{game_addr}\"]\n[[routes]]\ncommands = [1000, 1999]\nservice = \"game\"\n",
        pin.display()
    );
    let config = Config::parse(&text, "afxdp test").unwrap();
    let gateway = h.in_gateway(|| RunningGateway::start_afxdp(&config)).expect("AF_XDP gateway");
    let ready = Instant::now() + Duration::from_secs(10);
    while gateway.status().iter().map(|w| w.links_up).sum::<usize>() == 0 {
        assert!(Instant::now() < ready, "never linked to the game server");
        std::thread::sleep(Duration::from_millis(20));
    }

    for i in 0..4 {
        let ip: std::net::IpAddr = if i % 2 == 0 { GATEWAY_V4.into() } else { GATEWAY_V6.into() };
        h.in_players(|| {
            let addr = SocketAddr::new(ip, 7000);
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("TCP through AF_XDP");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = Vec::new();
            let token = sign(SECRET.as_bytes(), &Claims { uid: format!("p{i}"), dev: "pc".into(), exp: u64::MAX });
            let login = Codec::Protobuf.payload_form().encode_to_vec(&LoginRequest { token });
            send(&mut s, &Envelope::new(cmd::LOGIN, 1, 0, &login));
            let reply = recv(&mut s, &mut buf);
            assert_eq!((reply.cmd, reply.flags), (cmd::LOGIN, flags::RESPONSE));
            let r: LoginReply = Codec::Protobuf.payload_form().decode(&reply.payload).unwrap();
            assert_eq!(r.user_id, format!("p{i}"));
            for seq in 2..12 {
                let payload = format!("echo {i}/{seq}");
                send(&mut s, &Envelope::new(ECHO, seq, 0, payload.as_bytes()));
                let back = recv(&mut s, &mut buf);
                assert_eq!((back.seq, &*back.payload), (seq, payload.as_bytes()));
            }
            send(&mut s, &Envelope::new(cmd::LOGOUT, 20, 0, b""));
            assert_eq!(recv(&mut s, &mut buf).cmd, cmd::LOGOUT);
        });
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
