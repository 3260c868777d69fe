//! The control plane against real processes: a gateway with its agent API
//! (on loopback, or on the AF_XDP harness with `PORTCULLIS_E2E_IO=afxdp`),
//! the `portcullis-control` binary, its generated gRPC client and
//! `portcullisctl`.

mod common;

use std::time::Duration;

use common::{Managed, ADMIN, READ};
use portcullis_client::Event;
use portcullis_proto::pb::admin as pb;
use portcullis_sample_game_server::ECHO;
use portcullis_tests::{next_event, StackOptions};
use tonic::Code;

/// Command id of the maintenance notices the tests push.
const NOTICE: u32 = 1500;

async fn kick_event(watch: &mut tonic::Streaming<pb::Event>) -> pb::Event {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("an event within 10 s")
            .expect("the stream is healthy")
            .expect("the stream is open");
        if e.kind == "kick" {
            return e;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_groups_pushes_and_kicks_through_the_api_and_the_cli() {
    let m = Managed::start("sessions", StackOptions::default()).await;
    let mut api = m.admin().await;
    let mut watch =
        api.watch(pb::WatchRequest { after_seq: 0, kinds: vec!["kick".into()] }).await.unwrap().into_inner();

    let mut players = Vec::new();
    for i in 0..5 {
        let (c, events) = m.stack.player(&format!("p{i}")).await;
        if i < 2 {
            c.join("raid").await.unwrap();
        }
        players.push((c, events));
    }

    // Status (workers report every 100 ms).
    let status = status_when(&mut api, |s| s.nodes[0].workers.iter().map(|w| w.sessions).sum::<u64>() == 5).await;
    assert_eq!(status.nodes.len(), 1);
    assert_eq!(status.nodes[0].users, 5);
    let logins: u64 =
        status.nodes[0].workers.iter().flat_map(|w| &w.counters).filter(|c| c.name == "logins").map(|c| c.value).sum();
    assert_eq!(logins, 5);

    // Sessions, paged two at a time, then filtered.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = api
            .list_sessions(pb::ListSessionsRequest { page_size: 2, page_token: token.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(page.sessions.len() <= 2);
        seen.extend(page.sessions.into_iter().map(|s| s.user_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    seen.sort();
    assert_eq!(seen, ["p0", "p1", "p2", "p3", "p4"]);
    let raid = api
        .list_sessions(pb::ListSessionsRequest { group: "raid".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut raiders: Vec<_> = raid.sessions.iter().map(|s| s.user_id.clone()).collect();
    raiders.sort();
    assert_eq!(raiders, ["p0", "p1"]);
    let p3 = api
        .list_sessions(pb::ListSessionsRequest { user_id: "p3".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .sessions
        .remove(0);
    assert!(p3.connected && !p3.address.is_empty() && p3.logged_in_unix_ms > 0);
    let by_id = api.get_session(pb::SessionRef { session_id: p3.session_id }).await.unwrap().into_inner();
    assert_eq!(by_id.user_id, "p3");
    let err = api.get_session(pb::SessionRef { session_id: 12345 }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let by_address = api
        .list_sessions(pb::ListSessionsRequest { address: p3.address.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_address.sessions.len(), 5, "every player comes from the same address here");

    // Groups.
    let groups = api.list_groups(pb::ListGroupsRequest::default()).await.unwrap().into_inner();
    assert_eq!(groups.groups, [pb::GroupInfo { name: "raid".into(), members: 2 }]);

    // Pushes: to a group, to a user, to everyone.
    use pb::push_request::Target;
    let push = |target, text: &str| pb::PushRequest { target: Some(target), cmd: NOTICE, payload: text.into() };
    assert_eq!(api.push(push(Target::Group("raid".into()), "raid at 9")).await.unwrap().into_inner().count, 2);
    assert_eq!(api.push(push(Target::UserId("p4".into()), "hi p4")).await.unwrap().into_inner().count, 1);
    assert_eq!(api.push(push(Target::All(true), "maintenance at 10")).await.unwrap().into_inner().count, 5);
    let bad = api.push(pb::PushRequest { target: Some(Target::All(true)), cmd: 2, payload: vec![] }).await.unwrap_err();
    assert!(bad.code() == Code::InvalidArgument && bad.message().contains("cmd"), "{bad:?}");
    for (i, (_, events)) in players.iter_mut().enumerate() {
        let mut got = Vec::new();
        let expected = if i < 2 || i == 4 { 2 } else { 1 };
        while got.len() < expected {
            if let Event::Push { cmd: NOTICE, payload } = next_event(events, 5).await {
                got.push(String::from_utf8(payload).unwrap());
            }
        }
        assert_eq!(got.last().unwrap(), "maintenance at 10", "player {i}: {got:?}");
    }

    // Kick one session (with reconnect), then every session of a user.
    let kicked = api
        .kick(pb::KickRequest {
            session_id: p3.session_id,
            reason: "cheating".into(),
            reconnect: false,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kicked.count, 1);
    loop {
        if let Event::Kicked { reason, reconnect } = next_event(&mut players[3].1, 5).await {
            assert_eq!((reason.as_str(), reconnect), ("cheating", false));
            break;
        }
    }
    let e = kick_event(&mut watch).await;
    assert_eq!((e.session_id, e.user_id.as_str(), e.detail.as_str()), (p3.session_id, "p3", "cheating"));
    assert_eq!(
        api.kick(pb::KickRequest {
            user_id: "p2".into(),
            reason: "rebalance".into(),
            reconnect: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .count,
        1
    );
    loop {
        if let Event::Kicked { reason, reconnect } = next_event(&mut players[2].1, 5).await {
            assert_eq!((reason.as_str(), reconnect), ("rebalance", true));
            break;
        }
    }
    assert_eq!(kick_event(&mut watch).await.user_id, "p2");
    assert_eq!(api.kick(pb::KickRequest::default()).await.unwrap_err().code(), Code::InvalidArgument);

    // The same through portcullisctl: tables and --json.
    let status = m.ctl(&["status"]);
    assert!(status.contains("SESSIONS") && status.contains(&m.stack.config.gateway.name), "{status}");
    let json: serde_json::Value = serde_json::from_str(&m.ctl(&["--json", "status"])).unwrap();
    assert_eq!(json["nodes"][0]["users"], 3);
    let listed = m.ctl(&["sessions", "list", "--group", "raid"]);
    assert!(listed.contains("p0") && listed.contains("p1") && !listed.contains("p4"), "{listed}");
    let shown = m.ctl(&["sessions", "show", &players_session(&m, "p4").await.to_string()]);
    assert!(shown.contains("p4"), "{shown}");
    let groups = m.ctl(&["groups", "list"]);
    assert!(groups.contains("raid") && groups.contains('2'), "{groups}");
    let members = m.ctl(&["groups", "members", "raid"]);
    assert!(members.contains("p0") && members.contains("p1"), "{members}");
    let pushed = m.ctl(&["push", "--user", "p4", "--cmd", &NOTICE.to_string(), "--payload", "from the cli"]);
    assert!(pushed.contains("1 session"), "{pushed}");
    loop {
        if let Event::Push { payload, .. } = next_event(&mut players[4].1, 5).await {
            assert_eq!(payload, b"from the cli");
            break;
        }
    }
    let out = m.ctl(&["kick", "--user", "p4", "--reason", "from the cli"]);
    assert!(out.contains("1 session"), "{out}");
    assert_eq!(kick_event(&mut watch).await.user_id, "p4");
    let json: serde_json::Value = serde_json::from_str(&m.ctl(&["--json", "sessions", "list"])).unwrap();
    assert_eq!(json["sessions"].as_array().unwrap().len(), 2, "p0 and p1 are left: {json}");
    // watch prints events as they come: one kick, then it stops.
    let ctl = {
        let (api, dir) = (m.api, m.dir.clone());
        std::thread::spawn(move || {
            let _ = dir;
            std::process::Command::new(env!("CARGO_BIN_EXE_portcullisctl"))
                .args(["--control", &format!("http://{api}"), "watch", "--kind", "kick", "--count", "1"])
                .env("PORTCULLIS_TOKEN", READ)
                .output()
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    m.ctl(&["kick", "--user", "p0", "--reason", "watched"]);
    let out = ctl.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("kick") && text.contains("watched"), "{text}");
}

/// Waits (bounded) until every worker's link to game server `addr` is up.
async fn wait_until_up(api: &mut common::Client, addr: &str) {
    for _ in 0..100 {
        let list = api.list_backends(pb::BackendsRequest::default()).await.unwrap().into_inner();
        if list.services[0].servers.iter().any(|s| s.addr == addr && s.health == "up") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the links to {addr} never came up");
}

/// The status once `ready` holds (bounded).
async fn status_when(api: &mut common::Client, ready: impl Fn(&pb::ClusterStatus) -> bool) -> pb::ClusterStatus {
    for _ in 0..100 {
        let s = api.status(pb::StatusRequest::default()).await.unwrap().into_inner();
        if ready(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the status never showed what was expected");
}

async fn players_session(m: &Managed, user: &str) -> u64 {
    let mut api = m.admin().await;
    let page = api
        .list_sessions(pb::ListSessionsRequest { user_id: user.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    page.sessions[0].session_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_a_token_or_with_the_read_role_are_refused_and_counted() {
    let m = Managed::start("auth", StackOptions::default()).await;
    let mut anonymous = m.client(None).await.unwrap();
    let err = anonymous.status(pb::StatusRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut wrong = m.client(Some("not-the-token-0123456789")).await.unwrap();
    assert_eq!(wrong.status(pb::StatusRequest::default()).await.unwrap_err().code(), Code::Unauthenticated);
    let mut reader = m.client(Some(READ)).await.unwrap();
    reader.status(pb::StatusRequest::default()).await.expect("read may read");
    let err = reader.kick(pb::KickRequest { user_id: "x".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = reader
        .set_limits(pb::SetLimitsRequest { limits: [("ip_rate".into(), "1".into())].into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let (ok, _, stderr) = m.ctl_as(READ, &["kick", "--user", "x"]);
    assert!(!ok && stderr.contains("PermissionDenied") || stderr.contains("permission"), "{stderr}");
    let (ok, _, stderr) = m.ctl_as("", &["status"]);
    assert!(!ok && stderr.to_lowercase().contains("token"), "{stderr}");

    let status = m.admin().await.status(pb::StatusRequest::default()).await.unwrap().into_inner();
    let count = |method: &str, outcome: &str| {
        status.api_calls.iter().find(|c| c.label == method && c.name == outcome).map_or(0, |c| c.value)
    };
    // (portcullisctl without a token refuses before calling.)
    assert_eq!(count("Status", "unauthenticated"), 2, "{:?}", status.api_calls);
    assert_eq!(count("Kick", "permission_denied"), 2);
    assert_eq!(count("SetLimits", "permission_denied"), 1);
    let metrics = m.scrape().await;
    assert!(
        metrics.contains(r#"portcullis_control_api_calls_total{method="Kick",outcome="permission_denied"} 2"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_server_gets_no_new_sessions_and_servers_change_without_a_restart() {
    let opts = StackOptions { game_servers: 2, service: "sticky = true\n".into(), ..Default::default() };
    let mut m = Managed::start("backends", opts).await;
    let mut api = m.admin().await;
    let (a, b) = (m.stack.games[0].addr.to_string(), m.stack.games[1].addr.to_string());
    let list = api.list_backends(pb::BackendsRequest::default()).await.unwrap().into_inner();
    let servers = &list.services[0].servers;
    assert_eq!(servers.len(), 2);
    assert!(servers.iter().all(|s| s.health == "up" && s.links_up == s.workers), "{servers:?}");

    use pb::server_update::Op;
    let update = |op: Op, addr: &str, weight: u32| pb::ServerUpdate {
        service: "game".into(),
        addr: addr.into(),
        op: op as i32,
        weight,
        node: String::new(),
    };
    let list = api.update_server(update(Op::Drain, &a, 0)).await.unwrap().into_inner();
    assert!(list.services[0].servers.iter().any(|s| s.addr == a && s.drained));
    let before = m.stack.games[0].game.requests.load(std::sync::atomic::Ordering::Relaxed);
    for i in 0..10 {
        let (c, _) = m.stack.player(&format!("new{i}")).await;
        c.call(ECHO, b"where am I").await.expect("answered by the other server");
    }
    assert_eq!(
        m.stack.games[0].game.requests.load(std::sync::atomic::Ordering::Relaxed),
        before,
        "the drained server got no new session"
    );
    let out = m.ctl(&["backends", "undrain", "game", &a]);
    assert!(out.contains(&a) && out.contains("active"), "{out}");

    // Weight, remove and add, live; a bad address is refused.
    let list = api.update_server(update(Op::SetWeight, &b, 5)).await.unwrap().into_inner();
    assert!(list.services[0].servers.iter().any(|s| s.addr == b && s.weight == 5));
    let list = api.update_server(update(Op::Remove, &a, 0)).await.unwrap().into_inner();
    assert_eq!(list.services[0].servers.len(), 1);
    let out = m.ctl(&["backends", "add", "game", &a, "--weight", "2"]);
    assert!(out.contains(&a), "{out}");
    wait_until_up(&mut api, &a).await;
    // A server the gateway has never seen.
    let c = m.stack.add_game_server().await.to_string();
    api.update_server(update(Op::Add, &c, 1)).await.unwrap();
    wait_until_up(&mut api, &c).await;
    let err = api.update_server(update(Op::Add, "not an address", 1)).await.unwrap_err();
    assert!(err.code() == Code::InvalidArgument && err.message().contains("addr"), "{err:?}");
    let err =
        api.update_server(pb::ServerUpdate { service: "nope".into(), ..update(Op::Drain, &a, 0) }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_routes_and_limits_live_and_a_bad_one_is_refused_naming_the_key() {
    let m = Managed::start("reload", StackOptions::default()).await;
    let mut api = m.admin().await;
    let (player, mut events) = m.stack.player("steady").await;
    let err = player.call(2500, b"x").await.unwrap_err();
    assert!(format!("{err}").contains("UnknownCommand"), "{err}");

    // A bad config is refused, naming the key; nothing changes.
    let good = m.stack.config.to_toml_redacted().replace("<hidden>", portcullis_tests::SECRET);
    let bad = good.replace("commands = [1000, 1999]", "commands = [1999, 1000]");
    let err = api.reload(pb::ReloadRequest { config_toml: bad, ..Default::default() }).await.unwrap_err();
    assert!(err.code() == Code::InvalidArgument && err.message().contains("routes[0].commands"), "{err:?}");
    let path = m.dir.join("bad.toml");
    std::fs::write(&path, good.replace("[limits]", "[limits]\nno_such_limit = 1")).unwrap();
    let (ok, _, stderr) = m.ctl_as(ADMIN, &["reload", "--file", path.to_str().unwrap()]);
    assert!(!ok && stderr.contains("no_such_limit"), "{stderr}");

    // A route for 2000-2999, with the frame size changed too: that needs a
    // restart and is reported, not applied.
    let max = m.stack.config.gateway.max_frame_bytes;
    let new = good.replace("commands = [1000, 1999]", "commands = [1000, 2999]").replacen(
        &format!("max_frame_bytes = {max}"),
        &format!("max_frame_bytes = {}", max / 2),
        1,
    );
    let reply = api.reload(pb::ReloadRequest { config_toml: new, ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(reply.applied, ["routes[0].commands"], "{reply:?}");
    assert_eq!(reply.needs_restart, ["gateway.max_frame_bytes"], "{reply:?}");
    let view = api.get_config(pb::ConfigRequest::default()).await.unwrap().into_inner();
    assert_eq!(view.routes, [pb::RouteInfo { first: 1000, last: 2999, service: "game".into() }]);
    assert!(view.toml.contains("<hidden>") && !view.toml.contains(portcullis_tests::SECRET), "secrets are not shown");
    let max = m.stack.config.gateway.max_frame_bytes.to_string();
    assert!(view.toml.contains(&format!("max_frame_bytes = {max}")), "the running value stays until a restart");
    let answer = player.call(2500, b"x").await;
    assert!(!format!("{answer:?}").contains("UnknownCommand"), "routed now: {answer:?}");
    player.call(ECHO, b"still here").await.expect("the connection survived the reload");

    // Limits, live, through the CLI.
    let out = m.ctl(&["limits", "set", "session_rate=77", "session_burst=150"]);
    assert!(out.contains("limits.session_rate") && out.contains("limits.session_burst"), "{out}");
    let shown = m.ctl(&["limits", "show"]);
    assert!(shown.contains("session_rate") && shown.contains("77"), "{shown}");
    let reply = api
        .set_limits(pb::SetLimitsRequest {
            limits: [("max_recipients".into(), "32".into())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.applied, ["limits.max_recipients"]);
    let (ok, _, stderr) = m.ctl_as(ADMIN, &["limits", "set", "session_rate=-1"]);
    assert!(!ok && stderr.contains("session_rate"), "{stderr}");
    let routes = m.ctl(&["routes"]);
    assert!(routes.contains("1000") && routes.contains("2999") && routes.contains("game"), "{routes}");
    player.call(ECHO, b"still here").await.expect("the connection survived");
    assert!(events.try_recv().is_err(), "no kick, no close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_killed_and_restarted_while_100_players_play_loses_nothing() {
    let m = Managed::start("restart", StackOptions::default()).await;
    let mut m = m;
    let mut players = Vec::new();
    for i in 0..100 {
        players.push(m.stack.player(&format!("player{i}")).await);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, (c, _events)) in players.into_iter().enumerate() {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut answered = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let payload = format!("{i}/{answered}");
                let back = c.call(ECHO, payload.as_bytes()).await.expect("every request answered");
                assert_eq!(back, payload.as_bytes());
                answered += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (answered, c)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    m.kill_control();
    tokio::time::sleep(Duration::from_secs(2)).await;
    m.start_control().await;
    // Control sees every player again.
    status_when(&mut m.admin().await, |s| s.nodes[0].workers.iter().map(|w| w.sessions).sum::<u64>() == 100).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let (answered, _client) = t.await.expect("no player failed");
        assert!(answered > 10, "each player kept playing ({answered} answers)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_the_dashboard_uses_only_what_they_expose() {
    let m = Managed::start("metrics", StackOptions::default()).await;
    let (c, _events) = m.stack.player("scraped").await;
    c.call(ECHO, b"for the histograms").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // a status report
    let text = m.scrape().await;
    for expected in [
        "portcullis_node_up{node=",
        "portcullis_sessions{node=",
        "portcullis_refusals_total{node=",
        "portcullis_backend_request_duration_seconds_bucket{node=",
        "portcullis_client_answer_duration_seconds_count{node=",
        "portcullis_backend_links_up{node=",
        "portcullis_control_api_calls_total{method=",
    ] {
        assert!(text.contains(expected), "{expected} missing from\n{text}");
    }
    let answered: f64 = text
        .lines()
        .find(|l| l.starts_with("portcullis_backend_request_duration_seconds_count"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert!(answered >= 1.0, "the echo's round trip was recorded");

    match common::dashboard::find_promtool() {
        Some(promtool) => {
            use std::io::Write;
            let mut child = std::process::Command::new(promtool)
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("run promtool");
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        None if std::env::var_os("CI").is_some() => panic!("promtool is missing (Debian package prometheus)"),
        None => eprintln!("promtool not installed (Debian package prometheus): skipping `promtool check metrics`"),
    }

    let dashboard = include_str!("../../config/dashboards/portcullis.json");
    let filter_loaded = text.lines().any(|l| l == "portcullis_xdp_loaded 1");
    match common::dashboard::check_dashboard(dashboard, &text) {
        Ok(n) => assert!(n > 20, "{n} expressions checked"),
        Err(problems) => {
            // Without an XDP filter (loopback), control has no XDP counters.
            let real: Vec<_> = problems.iter().filter(|p| filter_loaded || !p.contains("portcullis_xdp_")).collect();
            assert!(real.is_empty(), "{real:#?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_grpc_tools_find_the_services_by_reflection_and_health() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let m = Managed::start("reflection", StackOptions::default()).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", m.api)).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest { service: "portcullis.admin.v1.Admin".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(serving.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let mut reflection = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("a list of services");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"portcullis.admin.v1.Admin".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_control_manages_several_dataplanes() {
    let named = |n: &str| StackOptions { config: format!("name = \"{n}\"\n"), ..Default::default() };
    let planes = Managed::start_many("several", vec![named("nic-a"), named("nic-b")]).await;
    let mut api = planes[0].admin().await;
    let mut players = Vec::new();
    for (i, p) in planes.iter().enumerate() {
        for j in 0..3 {
            players.push(p.stack.player(&format!("n{i}-p{j}")).await);
        }
    }
    let status = status_when(&mut api, |s| {
        s.nodes.len() == 2 && s.nodes.iter().all(|n| n.workers.iter().map(|w| w.sessions).sum::<u64>() == 3)
    })
    .await;
    let mut names: Vec<_> = status.nodes.iter().map(|n| n.node.as_str()).collect();
    names.sort();
    assert_eq!(names, ["nic-a", "nic-b"]);
    // Pages of two run across both dataplanes.
    let (mut seen, mut token) = (Vec::new(), String::new());
    loop {
        let page = api
            .list_sessions(pb::ListSessionsRequest { page_size: 2, page_token: token, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.sessions.into_iter().map(|s| (s.node, s.user_id)));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    seen.sort();
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert!(seen.contains(&("nic-b".into(), "n1-p2".into())));
    // A kick finds the user wherever it is; one node's status on its own.
    let n = api.kick(pb::KickRequest { user_id: "n1-p0".into(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(n.count, 1);
    let only_b = api.status(pb::StatusRequest { node: "nic-b".into() }).await.unwrap().into_inner();
    assert_eq!(only_b.nodes.len(), 1);
    assert_eq!(api.status(pb::StatusRequest { node: "nic-z".into() }).await.unwrap_err().code(), Code::NotFound);
    // Calls about one dataplane's config must name it.
    let err = api.list_backends(pb::BackendsRequest::default()).await.unwrap_err();
    assert!(err.code() == Code::InvalidArgument && err.message().contains("name a dataplane"), "{err:?}");
    let b = api.list_backends(pb::BackendsRequest { node: "nic-a".into() }).await.unwrap().into_inner();
    assert_eq!(b.services[0].name, "game");
}
