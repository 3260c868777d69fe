//! Loss and delay on the routed harness's router (root): a UDP echo through
//! it takes two delays, loses about 1 − (1 − loss)² of the round trips,
//! TCP still works, and dropping the handle restores the direct path.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_harness::lossy::{self, LossyOptions};
use portcullis_harness::{Harness, Options, GATEWAY_V4, GATEWAY_V6};

/// A UDP echo server on the gateway side, until `stop` is set.
fn echo_server(h: &Harness, ip: IpAddr, stop: Arc<AtomicBool>) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let socket = h.in_gateway(|| UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind echo"));
    socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let addr = socket.local_addr().unwrap();
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(&buf[..n], peer);
            }
        }
    });
    (addr, thread)
}

fn client(h: &Harness, server: SocketAddr) -> UdpSocket {
    let any: IpAddr = if server.is_ipv4() { [0, 0, 0, 0].into() } else { std::net::Ipv6Addr::UNSPECIFIED.into() };
    let socket = h.in_players(|| UdpSocket::bind(SocketAddr::new(any, 0)).expect("bind client"));
    socket.connect(server).unwrap();
    socket
}

/// Median round trip of `count` echoes, one at a time.
fn median_rtt(socket: &UdpSocket, count: u32) -> Duration {
    socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut rtts = Vec::new();
    let mut buf = [0u8; 64];
    for i in 0..count {
        let payload = i.to_be_bytes();
        let sent = Instant::now();
        socket.send(&payload).unwrap();
        loop {
            let n = socket.recv(&mut buf).expect("echo reply (loss 0)");
            if buf[..n] == payload {
                break;
            }
        }
        rtts.push(sent.elapsed());
    }
    rtts.sort();
    rtts[rtts.len() / 2]
}

/// Fraction of `count` paced datagrams echoed back.
fn echoed_fraction(socket: &UdpSocket, count: u32) -> f64 {
    let receiver = socket.try_clone().unwrap();
    receiver.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let counter = std::thread::spawn(move || {
        let mut seen = vec![false; count as usize];
        let mut buf = [0u8; 64];
        // Ends 500 ms after the last reply.
        while let Ok(n) = receiver.recv(&mut buf) {
            if n == 4 {
                let i = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                if let Some(s) = seen.get_mut(i) {
                    *s = true;
                }
            }
        }
        seen.iter().filter(|&&s| s).count()
    });
    for i in 0..count {
        socket.send(&i.to_be_bytes()).unwrap();
        std::thread::sleep(Duration::from_micros(250));
    }
    counter.join().unwrap() as f64 / f64::from(count)
}

/// Connects over TCP and echoes `len` bytes through the router.
fn tcp_echo(h: &Harness, len: usize) -> Duration {
    let listener = h.in_gateway(|| TcpListener::bind(SocketAddr::new(GATEWAY_V4.into(), 0)).unwrap());
    let target = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        while data.len() < len {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "client closed early");
            data.extend_from_slice(&buf[..n]);
        }
        stream.write_all(&data).unwrap();
    });
    let started = Instant::now();
    let mut stream =
        h.in_players(|| TcpStream::connect_timeout(&target, Duration::from_secs(20))).expect("tcp connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let sent: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    stream.write_all(&sent).unwrap();
    let mut back = vec![0u8; len];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(back, sent, "TCP echo through the lossy router");
    server.join().unwrap();
    started.elapsed()
}

#[test]
fn lossy_router_delays_and_drops_both_ways_and_undoes_itself() {
    if let Some(why) = portcullis_harness::unavailable() {
        eprintln!("skipping: {why}");
        return;
    }
    let h = Harness::up_with(Options { routed: true, sources: 2, ..Options::default() }).expect("routed harness");
    let router = h.router.clone().expect("routed");
    let stop = Arc::new(AtomicBool::new(false));
    let (v4, server4) = echo_server(&h, GATEWAY_V4.into(), stop.clone());
    let (v6, server6) = echo_server(&h, GATEWAY_V6.into(), stop.clone());
    let (c4, c6) = (client(&h, v4), client(&h, v6));

    let direct = median_rtt(&c4, 20);
    eprintln!("direct: RTT {direct:?}");
    assert!(direct < Duration::from_millis(5), "direct RTT {direct:?}");

    // Delay only: a round trip takes both delays.
    let delayed = lossy::start(&h.name, LossyOptions { delay: Duration::from_millis(30), ..LossyOptions::default() })
        .expect("lossy start");
    assert_eq!(delayed.router(), router);
    let (rtt4, rtt6) = (median_rtt(&c4, 20), median_rtt(&c6, 20));
    eprintln!("delay 30 ms: RTT {rtt4:?} (IPv4), {rtt6:?} (IPv6)");
    for rtt in [rtt4, rtt6] {
        assert!(rtt >= Duration::from_millis(60) && rtt < Duration::from_millis(68), "RTT {rtt:?}, want ≈ 60 ms");
    }
    let tcp = tcp_echo(&h, 8 * 1024);
    eprintln!("delay 30 ms: TCP connect + 8 KiB echo in {tcp:?}");
    assert!(tcp >= Duration::from_millis(120), "TCP took {tcp:?}: not delayed?");
    let stats = delayed.stats();
    eprintln!("delay 30 ms: {stats:?}");
    assert!(stats.to_gateway.forwarded >= 40 && stats.to_players.forwarded >= 40, "{stats:?}");
    assert_eq!(stats.to_gateway.dropped + stats.to_players.dropped, 0);
    drop(delayed);

    // Loss 20 % each way: about 0.8 × 0.8 of the round trips survive.
    let lossy = lossy::start(
        &h.name,
        LossyOptions { delay: Duration::from_millis(30), loss: 20.0, seed: 7, ..LossyOptions::default() },
    )
    .expect("lossy start");
    let fraction = echoed_fraction(&c4, 2_000);
    let stats = lossy.stats();
    eprintln!("loss 20 %: {:.3} of 2 000 echoed; {stats:?}", fraction);
    assert!((fraction - 0.64).abs() <= 0.05, "echoed {fraction}, want 0.64 ± 0.05");
    // The datagrams, and maybe a retransmission of the TCP connection's
    // last segments (discarded in the queue of the first handle).
    let received = stats.to_gateway.received;
    assert!((2_000..2_010).contains(&received), "forwarded packets only: {stats:?}");
    for way in [stats.to_gateway, stats.to_players] {
        let lost = way.dropped as f64 / way.received as f64;
        assert!((lost - 0.2).abs() < 0.04, "one way lost {lost}: {stats:?}");
        assert_eq!(way.overflowed, 0);
    }
    drop(lossy);

    // TCP gets through loss too (retransmissions): 5 %, as in benchmarks.
    let lossy = lossy::start(
        &h.name,
        LossyOptions { delay: Duration::from_millis(30), loss: 5.0, seed: 11, ..LossyOptions::default() },
    )
    .expect("lossy start");
    let tcp = tcp_echo(&h, 64 * 1024);
    eprintln!("delay 30 ms, loss 5 %: TCP connect + 64 KiB echo in {tcp:?}; {:?}", lossy.stats());
    drop(lossy);

    // Undone: no rules, no TUNs, the direct path again.
    let rules = portcullis_harness::ip(&["-n", &router, "rule", "show"]).unwrap()
        + &portcullis_harness::ip(&["-n", &router, "-6", "rule", "show"]).unwrap();
    assert!(!rules.contains("lookup 100") && !rules.contains("lookup 101"), "rules left: {rules}");
    let links = portcullis_harness::ip(&["-n", &router, "link", "show"]).unwrap();
    assert!(!links.contains("lossy-"), "TUNs left: {links}");
    let (after4, after6) = (median_rtt(&c4, 20), median_rtt(&c6, 20));
    eprintln!("after drop: RTT {after4:?} (IPv4), {after6:?} (IPv6)");
    assert!(after4 < Duration::from_millis(5) && after6 < Duration::from_millis(5), "{after4:?} {after6:?}");

    stop.store(true, Ordering::Relaxed);
    server4.join().unwrap();
    server6.join().unwrap();
}
