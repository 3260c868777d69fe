//! 200 players over loopback through gateway and sample game server:
//! logins, groups, chat, P2P and echo, every delivery counted.

use std::collections::HashSet;
use std::time::Duration;

use portcullis_client::Event;
use portcullis_proto::cmd;
use portcullis_sample_game_server::{room_group, CHAT_MESSAGE, CHAT_SAY, COUNTER_ADD, COUNTER_GET, ECHO};
use portcullis_tests::{Stack, StackOptions};

const PLAYERS: usize = 200;
const GROUPS: usize = 10;
const ECHOES: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_players_chat_message_and_echo_without_loss_or_duplicates() {
    let stack = Stack::start("").await;
    let mut players = Vec::new();
    for i in 0..PLAYERS {
        players.push(stack.player(&format!("u{i}")).await);
    }
    // Everyone joins a group before anyone speaks.
    let joins = players.iter().enumerate().map(|(i, (c, _))| {
        let c = c.clone();
        async move { c.join(&room_group(&format!("g{}", i % GROUPS))).await }
    });
    for r in futures_join(joins).await {
        r.expect("join");
    }
    // Each player: one gateway group message, one game-server chat line,
    // one P2P message to the next player, ECHOES echoes.
    let sends = players.iter().enumerate().map(|(i, (c, _))| {
        let c = c.clone();
        async move {
            let group = room_group(&format!("g{}", i % GROUPS));
            let delivered = c.send_to_group(&group, format!("group from u{i}").as_bytes(), false).await?;
            assert_eq!(delivered as usize, PLAYERS / GROUPS - 1);
            let ok =
                c.call_keyed(CHAT_SAY, format!("g{}", i % GROUPS).as_bytes(), format!("chat {i}").as_bytes()).await?;
            assert_eq!(ok, b"ok");
            let to = format!("u{}", (i + 1) % PLAYERS);
            assert_eq!(c.send_to_user(&to, format!("p2p from u{i}").as_bytes()).await?, 1);
            for k in 0..ECHOES {
                let payload = format!("echo {i}/{k}");
                assert_eq!(c.call(ECHO, payload.as_bytes()).await?, payload.as_bytes());
            }
            c.call(COUNTER_ADD, b"1").await
        }
    });
    for r in futures_join(sends).await {
        r.expect("player traffic");
    }
    // Collect what every player received.
    let per_group = PLAYERS / GROUPS;
    for (i, (_, events)) in players.iter_mut().enumerate() {
        let (mut group_from, mut chat, mut p2p) = (HashSet::new(), HashSet::new(), Vec::new());
        let expected = (per_group - 1) + per_group + 1;
        for _ in 0..expected {
            match portcullis_tests::next_event(events, 10).await {
                Event::Delivery { cmd: cmd::SEND_TO_GROUP, from_user_id, payload, .. } => {
                    assert_eq!(payload, format!("group from {from_user_id}").as_bytes());
                    assert!(group_from.insert(from_user_id), "duplicate group message to u{i}");
                }
                Event::Delivery { cmd: cmd::SEND_TO_USER, from_user_id, .. } => p2p.push(from_user_id),
                Event::Push { cmd: CHAT_MESSAGE, payload } => {
                    assert!(chat.insert(payload), "duplicate chat line to u{i}");
                }
                other => panic!("u{i} got an unexpected {other:?}"),
            }
        }
        let members: HashSet<String> =
            (0..PLAYERS).filter(|j| j % GROUPS == i % GROUPS && *j != i).map(|j| format!("u{j}")).collect();
        assert_eq!(group_from, members, "group messages to u{i}");
        assert_eq!(chat.len(), per_group, "chat lines to u{i}");
        assert_eq!(p2p, [format!("u{}", (i + PLAYERS - 1) % PLAYERS)]);
        // Nothing more arrives.
        assert!(tokio::time::timeout(Duration::from_millis(5), events.recv()).await.is_err(), "extra event to u{i}");
    }
    let (c, _) = &players[0];
    let total = c.call(COUNTER_GET, b"").await.unwrap();
    assert_eq!(total, PLAYERS.to_string().as_bytes());
}

/// Runs futures concurrently and returns their outputs in order.
async fn futures_join<F: std::future::Future + Send + 'static>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_udp_echo_service_returns_every_datagram() {
    let stack = Stack::start_with(StackOptions { udp_echo: true, ..Default::default() }).await;
    let echo = stack.udp_echo.expect("echo address");
    let socket = stack.udp().await;
    let mut buf = vec![0u8; 2048];
    let mut retried = 0;
    for i in 0..300usize {
        let datagram: Vec<u8> = (0..1 + i * 4).map(|b| (b ^ i) as u8).collect();
        // UDP may lose a datagram; three tries each, all counted.
        let mut answered = false;
        for _ in 0..3 {
            socket.send_to(&datagram, echo).await.unwrap();
            if let Ok(r) = tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buf)).await {
                let (n, from) = r.unwrap();
                assert_eq!((from, &buf[..n]), (echo, &datagram[..]), "datagram {i}");
                answered = true;
                break;
            }
            retried += 1;
        }
        assert!(answered, "datagram {i} never came back");
    }
    assert!(retried < 5, "{retried} datagrams had to be sent again");
}
