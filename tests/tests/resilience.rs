//! Sessions and routing that survive real players, end to end over
//! loopback: resume after a cut, multi-login, a game server killed and
//! restarted under load, draining, two workers, delegate auth, limits,
//! graceful shutdown.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use portcullis_client::{Client, ClientError, ErrorCode, Event};
use portcullis_proto::{cmd, Codec};
use portcullis_sample_game_server::{room_group, ECHO, STREAM};
use portcullis_tests::{
    answered_with_error, next_event, stream_through_cuts, token, token_for, CuttingProxy, Stack, StackOptions,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_mid_stream_resumes_with_nothing_lost_or_duplicated() {
    const ITEMS: u32 = 3000;
    let stack = Stack::start("").await;
    let proxy = CuttingProxy::start(stack.addr(Codec::Protobuf), stack.connector()).await;
    let (client, mut events) = Client::connect(proxy.addr).await.unwrap();
    let login = client.login(&token("streamer")).await.unwrap();
    assert_eq!(client.call(STREAM, ITEMS.to_string().as_bytes()).await.unwrap(), b"ok");
    let (items, cuts) = stream_through_cuts(&client, &mut events, &proxy, ITEMS, &[700, 1900], |r| {
        assert_eq!(r.session_id, login.session_id, "the same session");
    })
    .await;
    assert_eq!(cuts, 2);
    assert_eq!(items, (0..ITEMS).collect::<Vec<_>>(), "every item once, in order");
    // The session is fully usable after resuming.
    assert_eq!(client.call(ECHO, b"after").await.unwrap(), b"after");
    let resumes: u64 = stack.gateway.status().iter().map(|w| w.stats.resumes).sum();
    assert_eq!(resumes, 2);
}

async fn policy_stack(sessions: &str) -> Stack {
    Stack::start_with(StackOptions { config: format!("[sessions]\n{sessions}"), ..Default::default() }).await
}

async fn expect_kicked(events: &mut tokio::sync::mpsc::Receiver<Event>) -> String {
    loop {
        match next_event(events, 5).await {
            Event::Kicked { reason, reconnect } => {
                assert!(!reconnect);
                return reason;
            }
            Event::Push { .. } | Event::Delivery { .. } => {}
            other => panic!("expected a KICK, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_login_policies_kick_or_reject() {
    // Single device, kick the oldest.
    let stack = policy_stack("multi_login = \"single\"\non_conflict = \"kick-oldest\"").await;
    let addr = stack.addr(Codec::Protobuf);
    let (_old, mut old_events) = stack.player_at(addr, "al", "ios").await;
    let (new, _) = stack.player_at(addr, "al", "pc").await;
    assert!(expect_kicked(&mut old_events).await.contains("logged in again"));
    assert_eq!(next_event(&mut old_events, 5).await, Event::Closed);
    assert_eq!(new.call(ECHO, b"x").await.unwrap(), b"x");

    // Single device, reject the new login.
    let stack = policy_stack("multi_login = \"single\"\non_conflict = \"reject-new\"").await;
    let addr = stack.addr(Codec::Protobuf);
    let (first, _) = stack.player_at(addr, "al", "ios").await;
    let (second, _) = stack.connect(addr).await;
    let err = second.login(&token_for("al", "pc")).await.unwrap_err();
    assert!(matches!(err, ClientError::Server { code: ErrorCode::LoginConflict, .. }), "{err:?}");
    assert_eq!(first.call(ECHO, b"x").await.unwrap(), b"x", "the first session is untouched");

    // One per device type.
    let stack = policy_stack("multi_login = \"per-device-type\"").await;
    let addr = stack.addr(Codec::Protobuf);
    let (_ios, mut ios_events) = stack.player_at(addr, "al", "ios").await;
    let (pc, _) = stack.player_at(addr, "al", "pc").await;
    let (_ios2, _) = stack.player_at(addr, "al", "ios").await;
    assert!(expect_kicked(&mut ios_events).await.contains("ios"));
    assert_eq!(pc.call(ECHO, b"pc stays").await.unwrap(), b"pc stays");

    // Up to N devices.
    let stack = policy_stack("multi_login = \"multi-device\"\nmax_devices = 2").await;
    let addr = stack.addr(Codec::Protobuf);
    let (_a, mut a_events) = stack.player_at(addr, "al", "a").await;
    let (b, _) = stack.player_at(addr, "al", "b").await;
    let (c, _) = stack.player_at(addr, "al", "c").await;
    expect_kicked(&mut a_events).await;
    assert_eq!(b.send_to_user("al", b"to all my devices").await.unwrap(), 2, "b and c remain");
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_game_server_killed_and_restarted_under_load_answers_every_request() {
    let mut stack = Stack::start_with(StackOptions {
        game_servers: 2,
        config: "[backends]\nreconnect_ms = 50\nreconnect_max_ms = 200".into(),
        ..Default::default()
    })
    .await;
    let mut players = Vec::new();
    for i in 0..16 {
        players.push(stack.player(&format!("p{i}")).await);
    }
    let stop = Instant::now() + Duration::from_millis(2500);
    let tasks: Vec<_> = players
        .iter()
        .map(|(c, _)| {
            let c = c.clone();
            tokio::spawn(async move {
                let (mut ok, mut errors) = (0, 0);
                while Instant::now() < stop {
                    let r = c.call(ECHO, b"load").await;
                    match &r {
                        Ok(v) if v == b"load" => ok += 1,
                        _ if answered_with_error(&r) => {
                            errors += 1;
                            // A client backs off after an error
                            // (PROTOCOL.md §10), or floods.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        other => panic!("a request was not answered: {other:?}"),
                    }
                }
                (ok, errors)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = stack.games[0].game.requests.load(Ordering::Relaxed);
    assert!(before > 0, "server 0 took traffic before the crash");
    stack.games[0].kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let during = stack.games[0].game.requests.load(Ordering::Relaxed);
    stack.games[0].restart().await;
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        let (o, e) = t.await.unwrap();
        ok += o;
        errors += e;
    }
    assert!(ok > 100, "{ok} answered ok");
    let after = stack.games[0].game.requests.load(Ordering::Relaxed);
    assert!(after > during, "server 0 rejoined after its restart ({during} -> {after})");
    stack.wait_for_game_servers().await;
    eprintln!("ok {ok}, answered with errors {errors}, server 0: {before} before, {after} after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_server_gets_no_new_sessions_while_sticky_ones_finish() {
    let stack =
        Stack::start_with(StackOptions { game_servers: 2, service: "sticky = true".into(), ..Default::default() })
            .await;
    let count = |i: usize| stack.games[i].game.requests.load(Ordering::Relaxed);
    // Find a session stuck to server 0.
    let mut stuck = None;
    for i in 0..8 {
        let (c, e) = stack.player(&format!("old{i}")).await;
        let before = count(0);
        for _ in 0..5 {
            c.call(ECHO, b"x").await.unwrap();
        }
        if count(0) == before + 5 {
            stuck = Some((c, e));
            break;
        }
    }
    let (old, _events) = stuck.expect("a session on server 0");
    stack.games[0].pusher.set_draining(true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = count(0);
    for i in 0..8 {
        let (c, _) = stack.player(&format!("new{i}")).await;
        c.call(ECHO, b"x").await.unwrap();
    }
    assert_eq!(count(0), before, "no new session went to the draining server");
    for _ in 0..5 {
        old.call(ECHO, b"x").await.unwrap();
    }
    assert_eq!(count(0), before + 5, "the sticky session keeps its server while it drains");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_chat_across_workers() {
    const PLAYERS: usize = 40;
    let stack = Stack::start("workers = 2").await;
    let mut players = Vec::new();
    for i in 0..PLAYERS {
        let (c, e) = stack.player(&format!("u{i}")).await;
        c.join(&room_group("all")).await.unwrap();
        players.push((c, e));
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    let sessions: Vec<usize> = stack.gateway.status().iter().map(|w| w.sessions).collect();
    assert!(sessions.iter().all(|&s| s > 0), "SO_REUSEPORT spread sessions over both workers: {sessions:?}");
    for (i, (c, _)) in players.iter().enumerate() {
        assert_eq!(c.send_to_group(&room_group("all"), format!("hi from u{i}").as_bytes(), false).await.unwrap(), 39);
        assert_eq!(c.send_to_user(&format!("u{}", (i + 1) % PLAYERS), b"p2p").await.unwrap(), 1);
    }
    for (i, (_, events)) in players.iter_mut().enumerate() {
        let mut from = HashSet::new();
        let mut p2p = 0;
        for _ in 0..PLAYERS {
            match next_event(events, 10).await {
                Event::Delivery { cmd: cmd::SEND_TO_GROUP, from_user_id, .. } => assert!(from.insert(from_user_id)),
                Event::Delivery { cmd: cmd::SEND_TO_USER, .. } => p2p += 1,
                other => panic!("u{i}: unexpected {other:?}"),
            }
        }
        assert_eq!((from.len(), p2p), (PLAYERS - 1, 1), "u{i}");
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    let cross: u64 = stack.gateway.status().iter().map(|w| w.stats.cross_worker).sum();
    assert!(cross > 0, "messages crossed workers: {:?}", stack.gateway.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegate_authentication_through_an_auth_service() {
    let stack = Stack::start_with(StackOptions {
        auth: Some("kind = \"delegate\"\nservice = \"game\"\ntimeout_ms = 2000".into()),
        ..Default::default()
    })
    .await;
    let addr = stack.addr(Codec::Protobuf);
    let (c, _events) = stack.connect(addr).await;
    let mut login = None;
    for _ in 0..100 {
        match c.login("demo:carol:web").await {
            Ok(r) => {
                login = Some(r);
                break;
            }
            Err(ClientError::Server { message, .. }) if message.contains("unavailable") => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    let login = login.expect("the auth service came up");
    assert_eq!((login.user_id.as_str(), login.device.as_str()), ("carol", "web"));
    assert_eq!(c.call(ECHO, b"in").await.unwrap(), b"in");
    let (bad, _e) = stack.connect(addr).await;
    let err = bad.login("nobody").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Server { code: ErrorCode::AuthFailed, message } if message.contains("demo credentials")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_and_rate_limits_refuse_with_a_clear_error() {
    let stack = Stack::start("[limits]\nmax_connections_per_ip = 4\nsession_rate = 20\nsession_burst = 20").await;
    let (c, _e) = stack.player("fast").await;
    let calls: Vec<_> = (0..60).map(|_| c.call(ECHO, b"x")).collect();
    let results = futures_join(calls).await;
    let throttled =
        results.iter().filter(|r| matches!(r, Err(ClientError::Server { code: ErrorCode::Throttled, .. }))).count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert!(throttled > 0 && ok > 0, "ok {ok}, throttled {throttled}");
    assert_eq!(ok + throttled, 60, "every request answered");
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(stack.connect(stack.addr(Codec::Protobuf)).await);
    }
    let (extra, _) = stack.connect(stack.addr(Codec::Protobuf)).await;
    let err = extra.heartbeat().await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Closed) || matches!(&err, ClientError::Server { code: ErrorCode::Throttled, .. }),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_tells_every_client_to_reconnect_elsewhere() {
    let stack = Stack::start("workers = 2\nshutdown_deadline_ms = 3000").await;
    let mut players = Vec::new();
    for i in 0..6 {
        players.push(stack.player(&format!("s{i}")).await);
    }
    let started = Instant::now();
    stack.gateway.request_stop();
    for (_, events) in &mut players {
        match next_event(events, 5).await {
            Event::Kicked { reason, reconnect } => assert!(reconnect && reason.contains("reconnect"), "{reason}"),
            other => panic!("expected a reconnect notice, got {other:?}"),
        }
    }
    let Stack { gateway, .. } = stack;
    tokio::task::spawn_blocking(move || gateway.stop()).await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(3), "exited within the deadline");
}

async fn futures_join<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    let mut pinned: Vec<_> = futs.into_iter().map(Box::pin).collect();
    // Poll all concurrently by joining them through a JoinSet-free select loop.
    let mut done: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if done[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => done[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.extend(done.into_iter().map(|d| d.expect("done")));
    out
}
