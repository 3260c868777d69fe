//! A hostile internet, end to end (kernel sockets, or AF_XDP with players
//! behind a router): strangers that never log in are closed in bounded time
//! while 20 players play with nothing lost; junk from the players' own
//! address does not throttle them; a spammed player gets no more than its
//! inbound rate and each spammer is told what was delivered; a spent resume
//! token is refused.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_client::{Client, Event};
use portcullis_proto::pb::client::{Error as ErrorMsg, ErrorCode};
use portcullis_proto::{cmd, Codec, Envelope};
use portcullis_sample_game_server::ECHO;
use portcullis_tests::{token, token_for, CuttingProxy, Raw, Stack, StackOptions};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// Players that echo through the game server and message each other until
/// told to stop; every message is counted both ways.
struct Play {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(u64, u64, u64)>>,
}

impl Play {
    async fn start(stack: &Stack, n: usize) -> Play {
        let mut players = Vec::new();
        for i in 0..n {
            players.push(stack.player(&format!("player{i}")).await);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = players
            .into_iter()
            .enumerate()
            .map(|(i, (client, events))| {
                let stop = stop.clone();
                tokio::spawn(play(client, events, format!("player{}", (i + 1) % n), stop))
            })
            .collect();
        Play { stop, tasks }
    }

    /// Stops the players; returns (round trips failed, messages sent and
    /// delivered, messages received).
    async fn finish(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let mut totals = (0, 0, 0);
        for t in self.tasks {
            let (failed, delivered, received) = t.await.unwrap();
            totals = (totals.0 + failed, totals.1 + delivered, totals.2 + received);
        }
        totals
    }
}

async fn play(
    client: Client,
    mut events: mpsc::Receiver<Event>,
    friend: String,
    stop: Arc<AtomicBool>,
) -> (u64, u64, u64) {
    let (mut failed, mut delivered, mut received) = (0, 0, 0);
    while !stop.load(Ordering::Relaxed) {
        match client.call(ECHO, b"ping").await {
            Ok(answer) if answer == b"ping" => {}
            _ => failed += 1,
        }
        match client.send_to_user(&friend, b"hello").await {
            Ok(n) => delivered += u64::from(n),
            Err(_) => failed += 1,
        }
        while let Ok(e) = events.try_recv() {
            if matches!(e, Event::Delivery { .. }) {
                received += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What is still on its way.
    let quiet = Instant::now() + Duration::from_secs(1);
    while let Ok(Some(e)) = tokio::time::timeout_at(quiet.into(), events.recv()).await {
        if matches!(e, Event::Delivery { .. }) {
            received += 1;
        }
    }
    (failed, delivered, received)
}

/// Whether the gateway closed `s` within `wait` (EOF or reset; bytes it
/// sends meanwhile are read and dropped).
async fn closed_within(s: &mut (impl tokio::io::AsyncRead + Unpin), wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

fn frame(env: &Envelope<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    Codec::Protobuf.encode(env, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_closed_in_bounded_time_while_players_play_with_nothing_lost() {
    let stack = Stack::start("login_timeout_ms = 2000").await;
    stack.wait_for_game_servers().await;
    let play = Play::start(&stack, 20).await;
    let started = Instant::now();
    // Tricklers: a byte of a heartbeat every 300 ms (valid frames, answered),
    // which used to keep them open forever.
    let heartbeat = frame(&Envelope::new(cmd::HEARTBEAT, 1, 0, b""));
    let mut tricklers = Vec::new();
    for _ in 0..20 {
        tricklers.push(Raw::connect(&stack, Codec::Protobuf).await);
    }
    // Holders of a partial frame: a 4 000-byte prefix and half of it.
    let mut holders = Vec::new();
    for _ in 0..10 {
        let mut s = Raw::connect(&stack, Codec::Protobuf).await;
        s.send_bytes(&4000u32.to_be_bytes()).await;
        s.send_bytes(&[0; 2000]).await;
        holders.push(s);
    }
    // Probers that never read and provoke an ERROR with every frame.
    let junk: Vec<u8> = (0..50u32).flat_map(|seq| frame(&Envelope::new(1000, seq, 0, b"x"))).collect();
    let mut probers = Vec::new();
    for _ in 0..20 {
        let mut s = Raw::connect(&stack, Codec::Protobuf).await;
        let _ = s.try_send_bytes(&junk).await;
        probers.push(s);
    }
    for round in 0..10 {
        for s in &mut tricklers {
            let _ = s.try_send_bytes(&[heartbeat[round % heartbeat.len()]]).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for s in probers.iter_mut().chain(&mut holders).chain(&mut tricklers) {
        assert!(
            closed_within(&mut s.stream, Duration::from_secs(3)).await,
            "a stranger still open after {:?}",
            started.elapsed()
        );
    }
    let (failed, delivered, received) = play.finish().await;
    assert_eq!(failed, 0, "every round trip and message of the players succeeded");
    assert!(delivered > 0);
    assert_eq!(received, delivered, "every message counted as delivered arrived");
    let stats: Vec<_> = stack.gateway.status().into_iter().map(|w| w.stats).collect();
    let sum = |f: fn(&portcullis_core::Stats) -> u64| stats.iter().map(f).sum::<u64>();
    assert!(sum(|s| s.login_timeouts) >= 30, "tricklers and holders timed out: {}", sum(|s| s.login_timeouts));
    assert!(sum(|s| s.drop_not_logged_in) >= 20 * 8, "probers were refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_from_the_players_address_does_not_throttle_them() {
    let stack = Stack::start_with(StackOptions {
        config: "[limits]\nip_rate = 50\nip_burst = 100".into(),
        ..Default::default()
    })
    .await;
    stack.wait_for_game_servers().await;
    let play = Play::start(&stack, 10).await;
    // 30 strangers from the same address send ACK frames as fast as they can.
    let acks: Vec<u8> = (0..200).flat_map(|_| frame(&Envelope::new(cmd::ACK, 0, 0, b""))).collect();
    let mut strangers = Vec::new();
    for _ in 0..30 {
        let mut s = Raw::connect(&stack, Codec::Protobuf).await;
        let _ = s.try_send_bytes(&acks).await;
        strangers.push(s);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A player behind the same address can still log in.
    let (late, _events) = stack.player("latecomer").await;
    assert_eq!(late.call(ECHO, b"in").await.unwrap(), b"in");
    let (failed, delivered, received) = play.finish().await;
    assert_eq!(failed, 0, "no player was throttled");
    assert_eq!(received, delivered);
    let throttled: u64 = stack.gateway.status().iter().map(|w| w.stats.drop_throttled).sum();
    assert!(throttled > 0, "the strangers were");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spammed_player_gets_at_most_its_inbound_rate_and_spammers_are_told() {
    let stack = Stack::start_with(StackOptions {
        config: "workers = 2\n[limits]\npeer_inbound_rate = 20\npeer_inbound_burst = 40".into(),
        ..Default::default()
    })
    .await;
    stack.wait_for_game_servers().await;
    let (victim, mut victim_events) = stack.player("victim").await;
    let mut spammers = Vec::new();
    for device in ["ios", "android", "pc", "web"] {
        let (c, _events) = stack.connect(stack.addr(Codec::Protobuf)).await;
        c.login(&token_for("spammer", device)).await.unwrap();
        spammers.push((c, _events));
    }
    let started = Instant::now();
    let delivered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (c, events) in spammers {
        let delivered = delivered.clone();
        tasks.push(tokio::spawn(async move {
            let _events = events;
            for _ in 0..200 {
                if let Ok(n) = c.send_to_users(&["victim"], b"spam").await {
                    delivered.fetch_add(u64::from(n), Ordering::Relaxed);
                }
            }
        }));
    }
    // The victim plays on, undisturbed.
    for _ in 0..20 {
        assert_eq!(victim.call(ECHO, b"still here").await.unwrap(), b"still here");
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut got = 0u64;
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(500), victim_events.recv()).await {
        if matches!(e, Event::Delivery { .. }) {
            got += 1;
        }
    }
    let allowed = 40.0 + 20.0 * (elapsed + 0.5);
    assert!((got as f64) <= allowed, "{got} messages in {elapsed:.1} s");
    assert!(got >= 40, "the burst got through: {got}");
    assert_eq!(got, delivered.load(Ordering::Relaxed), "the spammers were told exactly what was delivered");
    let refused: u64 =
        stack.gateway.status().iter().map(|w| w.stats.drop_recipient_rate + w.stats.drop_pair_rate).sum();
    assert_eq!(refused, 800 - got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_token_works_once() {
    let stack = Stack::start("").await;
    let proxy = CuttingProxy::start(stack.addr(Codec::Protobuf), stack.connector()).await;
    let (client, mut events) = Client::connect(proxy.addr).await.unwrap();
    let login = client.login(&token("owner")).await.unwrap();
    proxy.cut_all();
    while !matches!(portcullis_tests::next_event(&mut events, 10).await, Event::Disconnected) {}
    let resumed = client.resume().await.expect("the first resume");
    assert_eq!(resumed.session_id, login.session_id);
    assert_ne!(resumed.resume_token, login.resume_token, "a new token");
    // A thief presenting the login's token is refused.
    let mut thief = Raw::connect(&stack, Codec::Protobuf).await;
    let env = thief.resume(1, &login.resume_token).await;
    let e: ErrorMsg = thief.decode(&env);
    assert_eq!((env.cmd, e.code), (cmd::ERROR, ErrorCode::ResumeFailed as i32), "{e:?}");
    // The owner is still connected and served; and resumes again with the
    // token it was given.
    assert_eq!(client.call(ECHO, b"mine").await.unwrap(), b"mine");
    proxy.cut_all();
    while !matches!(portcullis_tests::next_event(&mut events, 10).await, Event::Disconnected) {}
    assert_eq!(client.resume().await.expect("the second resume").session_id, login.session_id);
}
