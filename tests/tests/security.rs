//! The security chain end to end (kernel sockets, or AF_XDP with players
//! behind a router): the command whitelist by the role in the login token,
//! a command class's rate, and a source that sends garbage kicked and
//! refused while the players play on.

use std::time::Duration;

use portcullis_client::ClientError;
use portcullis_proto::pb::client::ErrorCode;
use portcullis_proto::{cmd, Codec, Envelope};
use portcullis_sample_game_server::{CHAT_SAY, COUNTER_GET, ECHO};
use portcullis_tests::{token_with_role, Raw, Stack, StackOptions};

fn refused_with(r: &Result<Vec<u8>, ClientError>, want: ErrorCode) -> bool {
    matches!(r, Err(ClientError::Server { code, .. }) if *code == want)
}

#[tokio::test]
async fn whitelisted_commands_are_served_by_role_and_the_rest_refused() {
    let stack = Stack::start_with(StackOptions {
        config: "[[security.whitelist]]\ncommands = [1000]\n\
                 [[security.whitelist]]\ncommands = [[1200, 1299]]\nroles = [\"moderator\"]\n\
                 [[security.classes]]\nname = \"chat\"\ncommands = [1101]\nrate = 1\nburst = 2\n\
                 [[security.whitelist]]\ncommands = [1101]\nstates = [\"in-group\"]"
            .into(),
        ..StackOptions::default()
    })
    .await;
    stack.wait_for_game_servers().await;
    for codec in Codec::ALL {
        let addr = stack.addr(codec);
        let (player, _e1) =
            portcullis_client::Client::connect_via(addr, codec, Duration::from_secs(10), stack.connector())
                .await
                .unwrap();
        player.login(&token_with_role(&format!("p-{codec}"), "pc", "")).await.unwrap();
        let (moderator, _e2) =
            portcullis_client::Client::connect_via(addr, codec, Duration::from_secs(10), stack.connector())
                .await
                .unwrap();
        moderator.login(&token_with_role(&format!("m-{codec}"), "pc", "moderator")).await.unwrap();
        assert_eq!(player.call(ECHO, b"hi").await.unwrap(), b"hi", "{codec}");
        assert!(refused_with(&player.call(COUNTER_GET, b"").await, ErrorCode::CommandNotAllowed), "{codec}");
        moderator.call(COUNTER_GET, b"").await.expect("moderators may");
        // Chat only in a group, at most 2 at once.
        assert!(refused_with(&player.call(CHAT_SAY, b"x").await, ErrorCode::CommandNotAllowed), "{codec}");
        player.join("room").await.unwrap();
        let said: Vec<_> =
            [player.call(CHAT_SAY, b"1").await, player.call(CHAT_SAY, b"2").await, player.call(CHAT_SAY, b"3").await]
                .into_iter()
                .collect();
        assert!(refused_with(&said[2], ErrorCode::Throttled), "{codec}: {said:?}");
        // The session goes on.
        assert_eq!(player.call(ECHO, b"still").await.unwrap(), b"still");
    }
}

#[tokio::test]
async fn a_source_sending_garbage_is_kicked_and_on_probation_while_players_play() {
    let stack = Stack::start_with(StackOptions {
        config: "max_bad_frames = 100\n\
                 [security.behaviour]\nthrottle = 10\nkick = 20\nblock = 1000\nbad_frame = 5\nban_secs = 2"
            .into(),
        ..StackOptions::default()
    })
    .await;
    stack.wait_for_game_servers().await;
    let (player, _events) = stack.player("alice").await;
    // Garbage: four undecodable frames.
    let mut raw = Raw::connect(&stack, Codec::Protobuf).await;
    raw.send_bytes(&[0, 0, 0, 2, 0xff, 0xff].repeat(4)).await;
    let kicks = raw.recv_all().await.iter().filter(|f| f.cmd == cmd::KICK).count();
    assert_eq!(kicks, 1, "kicked, not just closed");
    // On probation: its next connection that does not log in first is
    // closed at once (BLOCKED)…
    let mut again = Raw::connect(&stack, Codec::Protobuf).await;
    again.send(&Envelope::new(cmd::HEARTBEAT, 1, 0, b"")).await;
    assert!(has_error(&again.recv_all().await, ErrorCode::Blocked), "refused BLOCKED");
    // …while the player (logged in, scored as a user) plays on, and
    // another behind the same address logs in…
    assert_eq!(player.call(ECHO, b"ping").await.unwrap(), b"ping");
    let (late, _e) = stack.player("bob").await;
    assert_eq!(late.call(ECHO, b"in").await.unwrap(), b"in");
    // …and after `ban_secs` the source is off probation.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let mut back = Raw::connect(&stack, Codec::Protobuf).await;
    back.send(&Envelope::new(cmd::HEARTBEAT, 2, 0, b"")).await;
    assert_eq!(back.recv().await.map(|e| e.cmd), Some(cmd::HEARTBEAT), "served again");
    let stats = stack.gateway.status().into_iter().fold(portcullis_core::Stats::default(), |mut t, w| {
        t += &w.stats;
        t
    });
    assert!(stats.escalated_kicks >= 1 && stats.drop_banned >= 1, "{stats:?}");
}

fn has_error(envs: &[Envelope<'_>], code: ErrorCode) -> bool {
    use portcullis_proto::framework::PayloadForm;
    envs.iter().filter(|f| f.cmd == cmd::ERROR).any(|f| {
        PayloadForm::Protobuf
            .decode::<portcullis_proto::pb::client::Error>(&f.payload)
            .is_ok_and(|e| e.code == code as i32)
    })
}
