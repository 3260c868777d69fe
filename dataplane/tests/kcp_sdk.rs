//! The KCP transport against the client SDK over real UDP on loopback: a
//! minimal backend loop (one socket, the core, [`KcpTransport`]) as the
//! module doc describes, and the SDK's KCP connector with its `Client`.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_client::{connector, Client, DirectDialer, TransportKind};
use portcullis_core::auth;
use portcullis_core::config::Config;
use portcullis_core::shard::Shared;
use portcullis_core::{Gateway, Output};
use portcullis_dataplane::io::dispatch::ClientTransport;
use portcullis_dataplane::transport::kcp::{KcpCounters, KcpTransport};
use portcullis_dataplane::transport::{DatagramStats, DatagramTransport};
use portcullis_proto::Codec;

/// What the gateway loop reports when it stops.
struct Report {
    stats: DatagramStats,
    counters: KcpCounters,
    connections: usize,
}

/// Runs a KCP listener on `socket` until `stop`; `open` follows the core's
/// connection count.
fn gateway(socket: UdpSocket, stop: Arc<AtomicBool>, open: Arc<AtomicUsize>) -> Report {
    let local = socket.local_addr().unwrap();
    let config = Config::parse(
        &format!(
            r#"
            [[listeners]]
            bind = "{local}"
            codec = "protobuf"
            transport = "kcp"
            [auth]
            kind = "token"
            secret = "0123456789abcdef0123"
            "#
        ),
        "test",
    )
    .unwrap();
    let start = Instant::now();
    let auth = auth::from_config(&config).unwrap();
    let mut core = Gateway::new(&config, 0, Shared::new(1, [7; 32]), auth, start, Duration::from_secs(1_800_000_000));
    let mut kcp = KcpTransport::new(&config, start).unwrap();
    let mut buf = vec![0; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let wait = kcp.poll_timeout().map_or(Duration::from_millis(5), |t| t.saturating_duration_since(now));
        socket.set_read_timeout(Some(wait.clamp(Duration::from_millis(1), Duration::from_millis(5)))).unwrap();
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            let data = buf[..n].to_vec();
            kcp.handle_datagram(Instant::now(), &mut core, 0, local, from, &data);
        }
        let now = Instant::now();
        if kcp.poll_timeout().is_some_and(|t| t <= now) {
            kcp.handle_timeout(now, &mut core);
        }
        while let Some(out) = core.poll_output() {
            match out {
                Output::Transmit(c) => kcp.transmit(&mut core, c),
                Output::Close(c) => kcp.close(Instant::now(), &mut core, c),
                _ => {}
            }
        }
        while let Some(t) = kcp.poll_transmit(now, &mut buf) {
            let _ = socket.send_to(&buf[..t.len], t.to);
        }
        open.store(core.connection_count(), Ordering::Relaxed);
    }
    Report { stats: kcp.stats(), counters: kcp.counters(), connections: core.connection_count() }
}

#[test]
fn the_sdk_talks_to_the_kcp_transport_over_udp() {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = socket.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let open = Arc::new(AtomicUsize::new(0));
    let server = std::thread::spawn({
        let (stop, open) = (stop.clone(), open.clone());
        move || gateway(socket, stop, open)
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let connect = connector(TransportKind::Kcp, Arc::new(DirectDialer));
        let (client, _events) =
            Client::connect_via(addr, Codec::Protobuf, Duration::from_secs(5), connect).await.unwrap();
        for _ in 0..3 {
            client.heartbeat().await.unwrap();
        }
        assert_eq!(open.load(Ordering::Relaxed), 1);
        // Dropping the client drops its stream: the SDK sends CLOSE, and
        // the gateway forgets the connection at once (not after
        // dead_after_ms, 15 s).
        drop(client);
        let deadline = Instant::now() + Duration::from_secs(5);
        while open.load(Ordering::Relaxed) != 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    stop.store(true, Ordering::Relaxed);
    let report = server.join().unwrap();
    assert_eq!(report.counters.opened, 1);
    assert_eq!(report.counters.closed_by_peer, 1, "{:?}", report.counters);
    assert_eq!((report.connections, report.stats.connections), (0, 0));
    assert_eq!(report.stats.stateless_replies, 1);
    assert_eq!(report.stats.dropped, 0);
}
