//! Bad input over loopback: each gets a clear ERROR frame or a close, and a
//! healthy player keeps being served throughout.

use std::time::Duration;

use portcullis_client::Client;
use portcullis_proto::pb::client::{ErrorCode, LoginRequest};
use portcullis_proto::{cmd, Codec, Envelope};
use portcullis_sample_game_server::ECHO;
use portcullis_tests::{token, Raw, Stack};
use tokio::io::AsyncReadExt;

async fn still_served(healthy: &Client) {
    assert_eq!(healthy.call(ECHO, b"still here").await.unwrap(), b"still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_unknown_and_unauthenticated_frames_get_error_frames() {
    let stack = Stack::start("").await;
    let (healthy, _events) = stack.player("healthy").await;

    // A well-framed but undecodable protobuf envelope: ERROR, connection stays.
    let mut raw = Raw::connect(&stack, Codec::Protobuf).await;
    raw.send_bytes(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await;
    raw.expect_error(ErrorCode::BadFrame).await;
    raw.send(&Envelope::new(cmd::HEARTBEAT, 2, 0, b"")).await;
    assert_eq!(raw.recv().await.unwrap().seq, 2);
    // A business command before login.
    raw.send(&Envelope::new(ECHO, 3, 0, b"x")).await;
    raw.expect_error(ErrorCode::NotLoggedIn).await;
    // Bad tokens.
    for bad in ["", "garbage", &token("x")[..20], &format!("{}A", token("mallory"))] {
        let body = raw.codec.payload_form().encode_to_vec(&LoginRequest { token: bad.into(), ..Default::default() });
        raw.send(&Envelope::new(cmd::LOGIN, 4, 0, &body)).await;
        raw.expect_error(ErrorCode::AuthFailed).await;
    }
    still_served(&healthy).await;

    // Unknown commands after login: unrouted business id, unknown framework id.
    let mut raw = Raw::connect(&stack, Codec::Protobuf).await;
    raw.login("carol").await;
    raw.send(&Envelope::new(5000, 5, 0, b"")).await;
    assert_eq!(raw.expect_error(ErrorCode::UnknownCommand).await.1.cmd, 5000);
    raw.send(&Envelope::new(77, 6, 0, b"")).await;
    raw.expect_error(ErrorCode::UnknownCommand).await;
    // A command the game server does not know comes back as BACKEND_ERROR.
    raw.send(&Envelope::new(1999, 7, 0, b"")).await;
    assert!(raw.expect_error(ErrorCode::BackendError).await.1.message.contains("no command 1999"));
    still_served(&healthy).await;

    // The text listener: a human typing nonsense, then a valid login.
    let mut text = Raw::connect(&stack, Codec::Text).await;
    text.send_bytes(b"hello gateway\n").await;
    text.expect_error(ErrorCode::BadFrame).await;
    let login = format!("LOGIN 9 0 - {{\"token\":\"{}\"}}\n", token("typist"));
    text.send_bytes(login.as_bytes()).await;
    let reply = text.recv().await.unwrap();
    assert_eq!((reply.cmd, reply.seq), (cmd::LOGIN, 9));
    assert!(String::from_utf8_lossy(&reply.payload).contains("\"user_id\":\"typist\""));
    text.send_bytes(b"1000 10 0 - typed by hand\n").await;
    assert_eq!(&*text.recv().await.unwrap().payload, b"typed by hand");
    still_served(&healthy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_and_garbage_streams_are_closed() {
    let stack = Stack::start("max_frame_bytes = 4096\nmax_bad_frames = 4").await;
    let (healthy, _events) = stack.player("healthy").await;

    let mut raw = Raw::connect(&stack, Codec::Protobuf).await;
    raw.send_bytes(&(1u32 << 20).to_be_bytes()).await;
    let (_, e) = raw.expect_error(ErrorCode::FrameTooLarge).await;
    assert!(e.message.contains("4096"), "{e:?}");
    raw.expect_close().await;
    still_served(&healthy).await;

    // Random bytes: whatever they parse as, the connection ends explained.
    for (seed, codec) in [(1u64, Codec::Protobuf), (2, Codec::Flatbuffers), (3, Codec::Json), (4, Codec::Text)] {
        let mut raw = Raw::connect(&stack, codec).await;
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let garbage: Vec<u8> = (0..64 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        raw.send_bytes(&garbage).await;
        raw.expect_close().await;
    }
    still_served(&healthy).await;

    // Too many refused frames in a row also close the connection.
    let mut raw = Raw::connect(&stack, Codec::Protobuf).await;
    for _ in 0..4 {
        raw.send_bytes(&[0, 0, 0, 1, 0xff]).await;
    }
    raw.expect_close().await;
    still_served(&healthy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_and_others_are_served() {
    // Replay buffers larger than the output high-water mark: the slow-consumer
    // cut-off, not the peer-backlog refusal, is what this test exercises.
    let stack = Stack::start(
        "max_outbound_bytes = 262144\n[sessions]\nreplay_max_bytes = 134217728\nreplay_max_messages = 100000",
    )
    .await;
    let (healthy, _events) = stack.player("healthy").await;
    let (talker, _talker_events) = stack.player("talker").await;
    // The stalled client logs in and joins a group, then never reads again.
    let mut stalled = Raw::connect(&stack, Codec::Protobuf).await;
    stalled.login("stalled").await;
    let body = stalled
        .codec
        .payload_form()
        .encode_to_vec(&portcullis_proto::pb::client::GroupRequest { group: "flood".into() });
    stalled.send(&Envelope::new(cmd::JOIN_GROUP, 2, 0, &body)).await;
    assert_eq!(stalled.recv().await.unwrap().cmd, cmd::JOIN_GROUP);
    // Flood the group until the gateway gives up on the connection
    // (bounded: 32 MiB). The session itself stays, waiting for a RESUME.
    let chunk = vec![7u8; 32 * 1024];
    let slow_consumers = || stack.gateway.status().iter().map(|w| w.stats.slow_consumers).sum::<u64>();
    let mut cut_off = false;
    for round in 0..1024 {
        talker.send_to_group("flood", &chunk, false).await.unwrap();
        if round % 32 == 31 {
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
            if slow_consumers() > 0 {
                cut_off = true;
                break;
            }
        }
    }
    assert!(cut_off, "the stalled client was never disconnected");
    still_served(&healthy).await;
    // What the stalled client finds when it finally reads: data, then EOF.
    let mut read = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stalled.stream.read(&mut buf)).await.unwrap() {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    assert!(read < 64 << 20, "the backlog was bounded");
    // The talker was never affected.
    assert!(matches!(talker.heartbeat().await, Ok(())));
}
