//! WebSocket listeners over real sockets, beyond what every test does on
//! a WebSocket stack (`PORTCULLIS_E2E_TRANSPORT=websocket`): `wss` with a
//! certificate (a TLS WebSocket client logs in and echoes), and the HTTP
//! answers to upgrades the gateway refuses.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use portcullis_client::TransportKind;
use portcullis_dataplane::io::IoStats;
use portcullis_proto::pb::client::{ErrorCode, LoginReply, LoginRequest};
use portcullis_proto::{cmd, flags, Codec, Envelope};
use portcullis_sample_game_server::ECHO;
use portcullis_tests::{test_cert, token, Raw, Stack, StackOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

fn envelope(env: &Envelope<'_>) -> Vec<u8> {
    let mut framed = Vec::new();
    Codec::Protobuf.encode(env, &mut framed);
    framed.split_off(4) // one message carries the envelope without its length prefix
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_listener_serves_a_tls_websocket_client() {
    let cert = test_cert();
    let stack = Stack::start_with(StackOptions {
        transport: TransportKind::WebSocket,
        listener: format!("tls_cert = {:?}\ntls_key = {:?}", cert.cert_path, cert.key_path),
        ..Default::default()
    })
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.tls.roots[0].clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = stack.tcp(stack.addr(Codec::Protobuf)).await;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("TLS handshake");
    let url = format!("wss://localhost:{}/", stack.addr(Codec::Protobuf).port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.expect("WebSocket handshake over TLS");
    let login = LoginRequest { token: token("secure"), ..Default::default() };
    let body = Codec::Protobuf.payload_form().encode_to_vec(&login);
    ws.send(Message::Binary(envelope(&Envelope::new(cmd::LOGIN, 1, 0, &body)).into())).await.unwrap();
    ws.send(Message::Binary(envelope(&Envelope::new(ECHO, 2, 0, b"over wss")).into())).await.unwrap();
    let mut answers = Vec::new();
    while answers.len() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("an answer").unwrap().unwrap();
        let Message::Binary(bytes) = msg else { panic!("binary messages on a protobuf listener, got {msg:?}") };
        answers.push(Codec::Protobuf.decode(&bytes).unwrap().into_owned());
    }
    assert_eq!((answers[0].cmd, answers[0].seq, answers[0].flags), (cmd::LOGIN, 1, flags::RESPONSE));
    let reply: LoginReply = Codec::Protobuf.payload_form().decode(&answers[0].payload).unwrap();
    assert_eq!(reply.user_id, "secure");
    assert_eq!((answers[1].cmd, answers[1].seq, &*answers[1].payload), (ECHO, 2, &b"over wss"[..]));
    // A close is answered with a close.
    ws.close(None).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("the close answered");
    assert!(matches!(end, None | Some(Ok(Message::Close(_))) | Some(Err(_))), "{end:?}");
}

/// The gateway's whole answer to `request`, up to its close.
async fn answer(stack: &Stack, request: &str) -> String {
    let mut s = stack.tcp(stack.addr(Codec::Json)).await;
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("answered and closed within 5 s")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upgrades_get_an_http_answer_and_a_close() {
    let stack = Stack::start_with(StackOptions {
        transport: TransportKind::WebSocket,
        listener: "websocket_origins = [\"https://game.example\"]".into(),
        ..Default::default()
    })
    .await;
    let upgrade = |origin: &str| {
        format!(
            "GET / HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{origin}\r\n"
        )
    };
    let refused = answer(&stack, &upgrade("Origin: https://evil.example\r\n")).await;
    assert!(refused.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{refused}");
    let plain = answer(&stack, "GET / HTTP/1.1\r\nHost: gw\r\n\r\n").await;
    assert!(plain.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{plain}");
    // A raw TCP client of the JSON codec is not a WebSocket client either.
    let raw = answer(&stack, "{\"cmd\":1,\"seq\":1}\n\r\n\r\n").await;
    assert!(raw.starts_with("HTTP/1.1 400 "), "{raw}");
    // The listed origin is let in.
    let mut s = stack.tcp(stack.addr(Codec::Json)).await;
    s.write_all(upgrade("Origin: https://game.example\r\n").as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    // Counted by reason (the status is refreshed about every 100 ms).
    assert_eq!(io_after(&stack, |io| (io.ws_refused_upgrades, io.ws_upgrades), (3, 1)).await, (3, 1));
    // A frame the client did not mask: a protocol error, closed with 1002.
    s.write_all(&[0x82, 0x01, 0x00]).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert!(rest.ends_with(&[0x88, 0x02, 0x03, 0xea]), "a close frame with 1002 last: {rest:?}");
    assert_eq!(io_after(&stack, |io| io.ws_protocol_errors, 1).await, 1);
}

/// `read` of the workers' IO counters once it gives `want`, or after 3 s.
async fn io_after<T: PartialEq>(stack: &Stack, read: impl Fn(&IoStats) -> T, want: T) -> T {
    let sum = || {
        let mut all = IoStats::default();
        for w in stack.gateway.status() {
            all += &w.io;
        }
        read(&all)
    };
    for _ in 0..30 {
        if sum() == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_refused_at_accept_still_upgrades_and_reads_why() {
    let stack = Stack::start_with(StackOptions {
        transport: TransportKind::WebSocket,
        config: "[limits]\nmax_connections_per_ip = 1".into(),
        ..Default::default()
    })
    .await;
    let (player, _events) = stack.player("first").await;
    // The second connection from the address is refused as soon as it is
    // accepted; the refusal waits for the handshake and arrives as a message.
    let mut second = Raw::connect(&stack, Codec::Protobuf).await;
    second.expect_error(ErrorCode::Throttled).await;
    second.expect_eof().await;
    assert!(player.heartbeat().await.is_ok(), "the first goes on");
}
