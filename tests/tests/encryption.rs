//! Encrypted sessions end to end (kernel sockets, or AF_XDP with players
//! behind a router): the client SDK's handshake on every codec, sealed
//! requests, pushes and deliveries, RESUME with fresh keys after cut
//! connections, and listeners that require or refuse encryption.

use std::time::{Duration, Instant};

use portcullis_client::{Client, ClientError, Encryption, ErrorCode, Event};
use portcullis_proto::crypto::{Cipher, KeyShare, SessionSecret};
use portcullis_proto::pb::client::{Error as ErrorMsg, LoginReply, LoginRequest};
use portcullis_proto::{cmd, flags, Codec, Envelope};
use portcullis_sample_game_server::{ECHO, STREAM};
use portcullis_tests::{next_event, stream_through_cuts, token, CuttingProxy, Raw, Stack, StackOptions};

async fn client(stack: &Stack, codec: Codec, encryption: Encryption) -> (Client, tokio::sync::mpsc::Receiver<Event>) {
    let (c, events) =
        Client::connect_via(stack.addr(codec), codec, Duration::from_secs(10), stack.connector()).await.unwrap();
    c.set_encryption(encryption);
    (c, events)
}

#[tokio::test]
async fn sessions_are_encrypted_on_every_codec_by_default() {
    let stack = Stack::start("").await;
    for codec in Codec::ALL {
        let (alice, mut events) = client(&stack, codec, Encryption::default()).await;
        alice.login(&token(&format!("alice-{codec}"))).await.unwrap();
        assert_eq!(alice.cipher(), Some(Cipher::Aes128Gcm), "{codec}");
        let binary = [0u8, 0xff, b'\n', b'\\', b' ', 7];
        assert_eq!(alice.call(ECHO, &binary).await.unwrap(), binary, "{codec}");
        alice.join("room:e2e").await.unwrap();
        assert_eq!(alice.send_to_group("room:e2e", b"sealed hello", true).await.unwrap(), 1);
        match next_event(&mut events, 5).await {
            Event::Delivery { payload, .. } => assert_eq!(payload, b"sealed hello", "{codec}"),
            other => panic!("{codec}: unexpected {other:?}"),
        }
        alice.heartbeat().await.unwrap();
        // Clear and encrypted sessions live side by side.
        let (bob, _e) = client(&stack, codec, Encryption::Off).await;
        bob.login(&token(&format!("bob-{codec}"))).await.unwrap();
        assert_eq!(bob.cipher(), None);
        assert_eq!(bob.call(ECHO, b"clear").await.unwrap(), b"clear");
        alice.logout().await.unwrap();
    }
    // Worker counters are published periodically.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = stack.gateway.status();
        let (encrypted, failed): (u64, u64) =
            stats.iter().fold((0, 0), |(e, f), w| (e + w.stats.encrypted_logins, f + w.stats.drop_decrypt_failed));
        if (encrypted, failed) == (4, 0) {
            break;
        }
        assert!(Instant::now() < deadline, "encrypted logins {encrypted}, decrypt failures {failed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_stream_survives_cut_connections_with_fresh_keys_on_every_resume() {
    const ITEMS: u32 = 600;
    let stack = Stack::start("").await;
    for codec in [Codec::Protobuf, Codec::Json] {
        let proxy = CuttingProxy::start(stack.addr(codec), stack.connector()).await;
        let (c, mut events) =
            Client::connect_via(proxy.addr, codec, Duration::from_secs(10), portcullis_client::direct()).await.unwrap();
        c.set_encryption(Encryption::Required);
        let login = c.login(&token(&format!("streamer-{codec}"))).await.unwrap();
        assert_eq!(c.call(STREAM, ITEMS.to_string().as_bytes()).await.unwrap(), b"ok");
        let (items, cuts) = stream_through_cuts(&c, &mut events, &proxy, ITEMS, &[150, 400], |r| {
            assert_eq!((r.session_id, r.cipher.as_str()), (login.session_id, "aes-128-gcm"));
            assert_eq!(r.server_nonce.len(), 32);
        })
        .await;
        assert_eq!(cuts, 2);
        assert_eq!(items, (0..ITEMS).collect::<Vec<_>>(), "{codec}: every item once, in order");
        assert_eq!(c.call(ECHO, b"after").await.unwrap(), b"after");
    }
}

#[tokio::test]
async fn a_listener_that_requires_encryption_refuses_clear_clients() {
    let stack = Stack::start_with(StackOptions {
        listener: "encryption = \"required\"\ncipher = \"aes-256-gcm\"".into(),
        ..StackOptions::default()
    })
    .await;
    for codec in Codec::ALL {
        let (clear, _e) = client(&stack, codec, Encryption::Off).await;
        let refused = clear.login(&token("clear")).await;
        assert!(
            matches!(refused, Err(ClientError::Server { code: ErrorCode::EncryptionRequired, .. })),
            "{codec}: {refused:?}"
        );
        let (sealed, _e) = client(&stack, codec, Encryption::Preferred).await;
        sealed.login(&token(&format!("sealed-{codec}"))).await.unwrap();
        assert_eq!(sealed.cipher(), Some(Cipher::Aes256Gcm));
        assert_eq!(sealed.call(ECHO, b"x").await.unwrap(), b"x");
    }
}

#[tokio::test]
async fn a_client_that_requires_encryption_refuses_a_clear_listener() {
    let stack =
        Stack::start_with(StackOptions { listener: "encryption = \"off\"".into(), ..StackOptions::default() }).await;
    let (c, _e) = client(&stack, Codec::Protobuf, Encryption::Required).await;
    let r = c.login(&token("picky")).await;
    assert!(matches!(r, Err(ClientError::NotEncrypted)), "{r:?}");
    let (c, _e) = client(&stack, Codec::Protobuf, Encryption::Preferred).await;
    c.login(&token("easy")).await.unwrap();
    assert_eq!((c.cipher(), c.call(ECHO, b"y").await.unwrap()), (None, b"y".to_vec()));
}

/// A client written by hand from PROTOCOL.md §14, on the JSON listener (the
/// sealed payloads travel as `payload_b64`): a sealed echo, then a frame
/// altered on the way, which ends the connection.
#[tokio::test]
async fn a_hand_written_client_seals_by_the_book_and_a_tampered_frame_closes() {
    let stack = Stack::start("").await;
    let mut raw = Raw::connect(&stack, Codec::Json).await;
    let share = KeyShare::generate().unwrap();
    let ck = share.public_key().to_vec();
    raw.request(cmd::LOGIN, 1, &LoginRequest { token: token("by-hand"), client_key: ck.clone() }).await;
    let answer = raw.recv().await.expect("the LOGIN answer");
    assert_eq!((answer.cmd, answer.flags), (cmd::LOGIN, flags::RESPONSE), "the answer is clear");
    let reply: LoginReply = raw.decode(&answer);
    let cipher = Cipher::from_name(&reply.cipher).unwrap();
    let secret = SessionSecret::derive(&share.agree(&reply.server_key).unwrap(), &ck, &reply.server_key);
    let mut keys = secret.connection_keys(cipher, &ck, &reply.server_key);

    let env = Envelope::new(ECHO, 2, flags::ENCRYPTED, b"");
    let mut sealed = b"by the book".to_vec();
    keys.client_to_server.seal(&env, &mut sealed).unwrap();
    raw.send(&Envelope { payload: sealed.into(), ..env }).await;
    let back = raw.recv().await.expect("the echo");
    assert_eq!(back.flags, flags::RESPONSE | flags::ENCRYPTED);
    let mut payload = back.payload.to_vec();
    assert_eq!(keys.server_to_client.open(&back, &mut payload).unwrap(), b"by the book");

    let env = Envelope::new(ECHO, 3, flags::ENCRYPTED, b"");
    let mut sealed = b"pay 10 gold".to_vec();
    keys.client_to_server.seal(&env, &mut sealed).unwrap();
    sealed[4] ^= 0x01;
    raw.send(&Envelope { payload: sealed.into(), ..env }).await;
    let err = raw.recv().await.expect("an ERROR");
    assert_eq!(err.cmd, cmd::ERROR);
    let mut payload = err.payload.to_vec();
    let plain = keys.server_to_client.open(&err, &mut payload).expect("the ERROR is sealed too").to_vec();
    let e: ErrorMsg = raw.decode(&Envelope { payload: plain.into(), ..err });
    assert_eq!(e.code, ErrorCode::DecryptFailed as i32, "{e:?}");
    raw.expect_eof().await;
}
