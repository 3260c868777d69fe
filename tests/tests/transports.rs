//! What only some transports do: QUIC connection migration, datagrams
//! and address validation.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_client::transport::quic;
use portcullis_client::{Client, Connector, Encryption, Event, TransportKind};
use portcullis_proto::Codec;
use portcullis_sample_game_server::{ECHO, STATE_STREAM, STATE_UPDATE};
use portcullis_tests::{test_cert, token, Stack, StackOptions};

/// A stack whose listeners speak `transport`.
async fn stack_over(transport: TransportKind, gateway: &str) -> Stack {
    Stack::start_with(StackOptions { transport, config: gateway.into(), ..Default::default() }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_player_whose_address_changes_keeps_its_connection_and_session() {
    let stack = stack_over(TransportKind::Quic, "workers = 2").await;
    let dialer = stack.dialer();
    let endpoint: Arc<Mutex<Option<quic::quinn::Endpoint>>> = Arc::default();
    let dials = Arc::new(AtomicUsize::new(0));
    let (slot, count) = (endpoint.clone(), dials.clone());
    let connector: Connector = Arc::new(move |addr| {
        let (dialer, slot, count) = (dialer.clone(), slot.clone(), count.clone());
        Box::pin(async move {
            count.fetch_add(1, Ordering::SeqCst);
            let stream = quic::connect(dialer.as_ref(), addr, &test_cert().tls).await?;
            *slot.lock().unwrap() = Some(stream.endpoint().clone());
            Ok(stream.into_connected())
        })
    });
    let (client, mut events) =
        Client::connect_via(stack.addr(Codec::Protobuf), Codec::Protobuf, Duration::from_secs(10), connector)
            .await
            .expect("connect over QUIC");
    client.login(&token("mover")).await.expect("login");
    let endpoint = endpoint.lock().unwrap().clone().expect("the connector kept the endpoint");
    let mut before = endpoint.local_addr().unwrap();
    // Each move is a new source address and port: with two workers, a
    // datagram the kernel spread by address would reach the wrong worker
    // about every other move.
    for moved in 0..5 {
        // Mid-stream: the move happens while twenty echoes are in flight.
        let calls: Vec<_> = (0..20)
            .map(|k| {
                let client = client.clone();
                tokio::spawn(async move {
                    let payload = format!("move {moved} echo {k}");
                    let back = client.call(ECHO, payload.as_bytes()).await.expect("echo through the moving connection");
                    assert_eq!(back, payload.as_bytes());
                })
            })
            .collect();
        endpoint.rebind(stack.player_udp(moved)).expect("rebind");
        for call in calls {
            call.await.expect("echo task");
        }
        let after = endpoint.local_addr().unwrap();
        assert_ne!(before, after);
        before = after;
    }
    for k in 0..20 {
        let back = client.call(ECHO, format!("last {k}").as_bytes()).await.expect("echo after the last move");
        assert_eq!(back, format!("last {k}").as_bytes());
    }
    assert_eq!(dials.load(Ordering::SeqCst), 1, "the client never reconnected");
    assert!(!matches!(events.try_recv(), Ok(Event::Disconnected | Event::Closed)), "the connection never dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreliable_requests_answers_and_pushes_travel_as_quic_datagrams() {
    let stack = stack_over(TransportKind::Quic, "").await;
    let (client, mut events) = stack.connect(stack.addr(Codec::Protobuf)).await;
    client.set_encryption(Encryption::Off);
    client.login(&token("stater")).await.expect("login");
    // Loopback loses nothing: every unreliable echo comes back.
    for k in 0..50 {
        let payload = format!("state {k}");
        let back = client.call_unreliable(ECHO, payload.as_bytes(), Duration::from_secs(5)).await.expect("echo");
        assert_eq!(back, payload.as_bytes());
    }
    let seq_before = client.last_server_seq();
    assert_eq!(client.call(STATE_STREAM, b"20").await.expect("start the state stream"), b"ok");
    let mut got = Vec::new();
    while got.len() < 20 {
        match portcullis_tests::next_event(&mut events, 5).await {
            Event::Push { cmd: STATE_UPDATE, payload } => got.push(String::from_utf8(payload).unwrap()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, (0..20).map(|i| i.to_string()).collect::<Vec<_>>());
    // Neither the unreliable answers nor the pushes were sequenced: only the
    // STATE_STREAM answer was.
    assert_eq!(client.last_server_seq(), seq_before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreliable_calls_go_on_the_stream_where_there_are_no_datagrams() {
    let stack = stack_over(TransportKind::Tcp, "").await;
    let (client, mut events) = stack.player("streamer").await;
    let before = client.last_server_seq();
    assert_eq!(client.call_unreliable(ECHO, b"x", Duration::from_secs(5)).await.expect("echo"), b"x");
    assert_eq!(client.call(STATE_STREAM, b"5").await.expect("state stream"), b"ok");
    for i in 0..5 {
        match portcullis_tests::next_event(&mut events, 5).await {
            Event::Push { cmd: STATE_UPDATE, payload } => assert_eq!(payload, i.to_string().as_bytes()),
            other => panic!("unexpected {other:?}"),
        }
    }
    // On a stream they are sequenced and replayable like any message.
    assert_eq!(client.last_server_seq(), before + 7);
}

/// Sends `n` UDP datagrams with `payloads` (in turn) from as many spoofed
/// sources, at 2 000/s, to the stack's protobuf listener; then a player logs
/// in and echoes. The workers' status after, or `None` on loopback (sources
/// cannot be spoofed there: the test says it skipped).
#[cfg(feature = "afxdp")]
async fn spoofed_flood_then_a_player(
    stack: &Stack,
    n: u64,
    payloads: Vec<Vec<u8>>,
) -> Option<Vec<portcullis_dataplane::WorkerStatus>> {
    use portcullis_harness::flood::Flood;
    let addr = stack.addr(Codec::Protobuf);
    let source = "10.99.0.1".parse().unwrap();
    let flood = Flood {
        sources: Flood::spoofed(source, n as u32),
        rate: Some(2_000),
        udp_payloads: payloads,
        ..Flood::udp(source.into(), addr.ip(), addr.port(), n)
    };
    let Some(report) = tokio::task::block_in_place(|| stack.flood(flood)) else {
        eprintln!("skipped: spoofed sources need the veth harness (PORTCULLIS_E2E_IO=afxdp)");
        return None;
    };
    assert_eq!(report.sent, n);
    // A player gets in after the flood (through a Retry, on QUIC).
    let (client, _events) = stack.player("survivor").await;
    assert_eq!(client.call(ECHO, b"still here").await.expect("echo"), b"still here");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let workers = stack.gateway.status_reports().lock().unwrap().clone();
    Some(workers)
}

/// QUIC Initials of `n` fresh client connections to `addr`, as recorded
/// datagrams (valid ones: the gateway decrypts them).
#[cfg(feature = "afxdp")]
fn quic_initials(n: usize, addr: std::net::SocketAddr) -> Vec<Vec<u8>> {
    use quinn_proto as proto;
    let config = quic::client_config(&test_cert().tls).expect("client config");
    let mut endpoint = proto::Endpoint::new(Arc::new(proto::EndpointConfig::default()), None, false, None);
    let now = std::time::Instant::now();
    (0..n)
        .map(|_| {
            let (_, mut conn) = endpoint.connect(now, config.clone(), addr, "localhost").expect("connect");
            let mut buf = Vec::new();
            let t = conn.poll_transmit(now, 1, &mut buf).expect("an Initial");
            buf.truncate(t.size);
            buf
        })
        .collect()
}

#[cfg(feature = "afxdp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_quic_initial_flood_gets_stateless_retries_and_players_still_connect() {
    let stack = stack_over(TransportKind::Quic, "").await;
    let addr = stack.addr(Codec::Protobuf);
    const N: u64 = 4_000;
    let initials = quic_initials(N as usize, addr);
    let Some(workers) = spoofed_flood_then_a_player(&stack, N, initials).await else { return };
    let replies: u64 = workers.iter().map(|w| w.io.udp_stateless_replies).sum();
    let open: u64 = workers.iter().map(|w| w.io.udp_connections).sum();
    let sessions: usize = workers.iter().map(|w| w.sessions).sum();
    // 2 s of flood at 2 000/s: at most 200/s per worker get handshake
    // state, the rest a Retry.
    let workers_n = workers.len() as u64;
    assert!(replies >= N - 2 * 200 * workers_n - 400, "{replies} stateless replies to {N} Initials");
    assert!(open <= 2 * 200 * workers_n + 400 + 1, "{open} QUIC connections open after the flood");
    assert_eq!(sessions, 1, "only the player has a session");
}

#[cfg(feature = "afxdp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_kcp_hello_flood_creates_no_state_and_players_still_connect() {
    use portcullis_proto::kcp::Control;
    let stack = stack_over(TransportKind::Kcp, "").await;
    const N: u64 = 4_000;
    let hellos: Vec<Vec<u8>> = (0..64).map(|nonce| Control::Hello { nonce }.to_vec()).collect();
    let Some(workers) = spoofed_flood_then_a_player(&stack, N, hellos).await else { return };
    let replies: u64 = workers.iter().map(|w| w.io.udp_stateless_replies).sum();
    let open: u64 = workers.iter().map(|w| w.io.udp_connections).sum();
    // Every HELLO got a cookie and nothing else: the player's is the only
    // conversation.
    assert!(replies >= N, "{replies} cookies for {N} HELLOs");
    assert_eq!(open, 1, "KCP conversations open");
}
