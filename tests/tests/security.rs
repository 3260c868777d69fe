//! The security chain end to end (kernel sockets, or AF_XDP with players
//! behind a router): the command whitelist by the role in the login token,
//! a command class's rate, and a source that sends garbage kicked and
//! refused while the players play on.

use std::time::Duration;

use portcullis_client::ClientError;
use portcullis_proto::pb::client::ErrorCode;
use portcullis_proto::{cmd, Codec, Envelope};
use portcullis_sample_game_server::{CHAT_SAY, COUNTER_GET, ECHO};
use portcullis_tests::{token_with_role, Stack, StackOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    let mut raw = stack.tcp(stack.addr(Codec::Protobuf)).await;
    raw.write_all(&[0, 0, 0, 2, 0xff, 0xff].repeat(4)).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut buf)).await.expect("closed").unwrap();
    let kicks = count_frames(&buf, cmd::KICK);
    assert_eq!(kicks, 1, "kicked, not just closed");
    // On probation: its next connection that does not log in first is
    // closed at once (BLOCKED)…
    let mut again = stack.tcp(stack.addr(Codec::Protobuf)).await;
    again.write_all(&frame(&Envelope::new(cmd::HEARTBEAT, 1, 0, b""))).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), again.read_to_end(&mut buf)).await.expect("closed").unwrap();
    assert!(has_error(&buf, ErrorCode::Blocked), "refused BLOCKED");
    // …while the player (logged in, scored as a user) plays on, and
    // another behind the same address logs in…
    assert_eq!(player.call(ECHO, b"ping").await.unwrap(), b"ping");
    let (late, _e) = stack.player("bob").await;
    assert_eq!(late.call(ECHO, b"in").await.unwrap(), b"in");
    // …and after `ban_secs` the source is off probation.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let mut back = stack.tcp(stack.addr(Codec::Protobuf)).await;
    back.write_all(&frame(&Envelope::new(cmd::HEARTBEAT, 2, 0, b""))).await.unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), back.read(&mut buf)).await.expect("answered").unwrap();
    assert_eq!(frames(&buf[..n]).first().map(|e| e.cmd), Some(cmd::HEARTBEAT), "served again");
    let stats = stack.gateway.status().into_iter().fold(portcullis_core::Stats::default(), |mut t, w| {
        t += &w.stats;
        t
    });
    assert!(stats.escalated_kicks >= 1 && stats.drop_banned >= 1, "{stats:?}");
}

fn frames(buf: &[u8]) -> Vec<portcullis_proto::Envelope<'static>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Ok(Some((range, used))) = Codec::Protobuf.framing().next_frame(&buf[pos..], usize::MAX) {
        out.push(Codec::Protobuf.decode(&buf[pos + range.start..pos + range.end]).unwrap().into_owned());
        pos += used;
    }
    out
}

fn frame(env: &Envelope<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    Codec::Protobuf.encode(env, &mut out);
    out
}

fn count_frames(buf: &[u8], command: u32) -> usize {
    frames(buf).iter().filter(|f| f.cmd == command).count()
}

fn has_error(buf: &[u8], code: ErrorCode) -> bool {
    use portcullis_proto::framework::PayloadForm;
    frames(buf).iter().filter(|f| f.cmd == cmd::ERROR).any(|f| {
        PayloadForm::Protobuf
            .decode::<portcullis_proto::pb::client::Error>(&f.payload)
            .is_ok_and(|e| e.code == code as i32)
    })
}
