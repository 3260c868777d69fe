//! Issue-3 behaviour in memory with simulated time: multi-login, resume and
//! replay, failover, health checks, draining, delegate auth, limits, and
//! several workers exchanging messages through their rings.

use super::*;
use portcullis_proto::pb::client::{ResumeReply, ResumeRequest};

fn resume(h: &mut Harness, conn: ConnId, token: &str, last: u64) -> Vec<Envelope<'static>> {
    h.send_msg(
        conn,
        cmd::RESUME,
        5,
        &ResumeRequest { resume_token: token.into(), last_server_seq: last, ..Default::default() },
    );
    h.take(conn)
}

fn push_to_user(h: &mut Harness, user: &str, text: &str) {
    h.server_sends(
        0,
        Kind::PushToUser(pbl::PushToUser {
            user_id: user.into(),
            cmd: 1500,
            payload: text.as_bytes().to_vec(),
            ..Default::default()
        }),
    );
}

fn payloads(frames: &[Envelope<'_>]) -> Vec<String> {
    frames.iter().map(|f| String::from_utf8_lossy(&f.payload).into_owned()).collect()
}

#[test]
fn single_device_kick_oldest_sends_the_reason_then_closes() {
    let mut h = Harness::new("[sessions]\nmulti_login = \"single\"\non_conflict = \"kick-oldest\"");
    let old = h.connect(Codec::Protobuf);
    h.login_as(old, "al", "ios");
    let new = h.connect(Codec::Protobuf);
    h.login_as(new, "al", "pc");
    let frames = h.take(old);
    assert_eq!(frames.last().unwrap().cmd, cmd::KICK);
    let kick: Kick = h.form(old).decode(&frames.last().unwrap().payload).unwrap();
    assert!(kick.reason.contains("logged in again") && !kick.reconnect, "{kick:?}");
    assert!(h.closed.contains(&old));
    assert_eq!(h.cores[0].sessions().of_user("al").len(), 1);
    assert_eq!(h.cores[0].stats().sessions_replaced, 1);
}

#[test]
fn reject_new_refuses_the_second_login_with_a_reason() {
    let mut h = Harness::new("[sessions]\nmulti_login = \"single\"\non_conflict = \"reject-new\"");
    let a = h.connect(Codec::Protobuf);
    h.login(a, "al");
    let b = h.connect(Codec::Protobuf);
    h.send_msg(b, cmd::LOGIN, 1, &LoginRequest { token: token("al"), ..Default::default() });
    assert!(h.expect_error(b, ErrorCode::LoginConflict).message.contains("another device"));
    assert!(!h.closed.contains(&a));
    assert!(h.take(a).is_empty());
}

#[test]
fn per_device_type_and_n_devices() {
    let mut h = Harness::new("[sessions]\nmulti_login = \"per-device-type\"");
    let ios = h.connect(Codec::Protobuf);
    let pc = h.connect(Codec::Protobuf);
    h.login_as(ios, "al", "ios");
    h.login_as(pc, "al", "pc");
    let ios2 = h.connect(Codec::Protobuf);
    h.login_as(ios2, "al", "ios");
    assert!(h.closed.contains(&ios) && !h.closed.contains(&pc));

    let mut h = Harness::new("[sessions]\nmulti_login = \"multi-device\"\nmax_devices = 2");
    let conns: Vec<_> = (0..3).map(|_| h.connect(Codec::Protobuf)).collect();
    for (i, &c) in conns.iter().enumerate() {
        h.login_as(c, "al", &format!("d{i}"));
    }
    assert!(h.closed.contains(&conns[0]), "the oldest of three went");
    assert!(!h.closed.contains(&conns[1]) && !h.closed.contains(&conns[2]));
}

#[test]
fn a_dropped_client_resumes_with_everything_unacknowledged_replayed_once() {
    let mut h = Harness::new("");
    h.links_up();
    let c = h.connect(Codec::Protobuf);
    let login = h.login(c, "al");
    assert!(!login.resume_token.is_empty());
    assert_eq!(login.resume_window_ms, 60_000);
    h.send_msg(c, cmd::JOIN_GROUP, 2, &GroupRequest { group: "guild".into() });
    let join = h.take(c);
    assert_eq!(join[0].server_seq, 1);
    for i in 1..=3 {
        push_to_user(&mut h, "al", &format!("m{i}"));
    }
    let frames = h.take(c);
    assert_eq!(frames.iter().map(|f| f.server_seq).collect::<Vec<_>>(), [2, 3, 4]);
    // The client acknowledges up to m1 (seq 2) piggy-backed on a heartbeat.
    h.send(c, &Envelope { ack: 2, ..Envelope::new(cmd::HEARTBEAT, 3, 0, b"") });
    assert_eq!(h.take(c)[0].server_seq, 0, "heartbeat answers are not sequenced");
    // The connection drops; messages keep coming, to the group too.
    h.drop_conn(c);
    push_to_user(&mut h, "al", "m4");
    let other = h.connect(Codec::Protobuf);
    h.login(other, "bo");
    h.send_msg(
        other,
        cmd::SEND_TO_GROUP,
        2,
        &SendToGroup { group: "guild".into(), payload: b"m5".to_vec(), include_self: false },
    );
    let r: SendResult = h.form(other).decode(&h.take(other)[0].payload).unwrap();
    assert_eq!(r.delivered, 1, "the dropped session is still a member");
    h.advance(Duration::from_secs(30));
    // Back on a new connection: the client processed up to m2 (seq 3).
    let c2 = h.connect(Codec::Protobuf);
    let frames = resume(&mut h, c2, &login.resume_token, 3);
    assert_eq!((frames[0].cmd, frames[0].seq, frames[0].flags), (cmd::RESUME, 5, flags::RESPONSE));
    let reply: ResumeReply = h.form(c2).decode(&frames[0].payload).unwrap();
    assert_eq!((reply.session_id, reply.user_id.as_str(), reply.replayed), (login.session_id, "al", 3));
    let replayed = &frames[1..];
    assert_eq!(replayed.iter().map(|f| f.server_seq).collect::<Vec<_>>(), [4, 5, 6]);
    assert_eq!(payloads(&replayed[..2]), ["m3", "m4"]);
    let d: Delivery = h.form(c2).decode(&replayed[2].payload).unwrap();
    assert_eq!(d.payload, b"m5");
    // Numbering continues; the group membership survived.
    push_to_user(&mut h, "al", "m6");
    assert_eq!(h.take(c2)[0].server_seq, 7);
    assert_eq!(h.cores[0].sessions().members("guild").count(), 1);
    assert_eq!(h.cores[0].stats().resumes, 1);
}

#[test]
fn sessions_not_resumed_in_time_are_cleaned_up_and_leave_their_groups() {
    let mut h = Harness::new("[sessions]\nresume_window_ms = 5000");
    let c = h.connect(Codec::Protobuf);
    let login = h.login(c, "al");
    h.send_msg(c, cmd::JOIN_GROUP, 2, &GroupRequest { group: "guild".into() });
    h.drop_conn(c);
    h.advance(Duration::from_millis(4_000));
    assert_eq!(h.cores[0].sessions().members("guild").count(), 1);
    h.advance(Duration::from_millis(1_500));
    assert_eq!(h.cores[0].sessions().members("guild").count(), 0);
    assert!(h.cores[0].shared().group_counts("guild").is_empty());
    assert_eq!(h.cores[0].shared().user_count(), 0);
    assert_eq!(h.cores[0].stats().sessions_expired, 1);
    let c2 = h.connect(Codec::Protobuf);
    resume(&mut h, c2, &login.resume_token, 0);
    h.received.insert(c2, Vec::new());
    let c3 = h.connect(Codec::Protobuf);
    h.send_msg(
        c3,
        cmd::RESUME,
        5,
        &ResumeRequest { resume_token: login.resume_token.clone(), last_server_seq: 0, ..Default::default() },
    );
    assert!(h.expect_error(c3, ErrorCode::ResumeFailed).message.contains("ended"));
}

#[test]
fn resume_refusals_are_explained() {
    let mut h = Harness::new("");
    let c = h.connect(Codec::Protobuf);
    let login = h.login(c, "al");
    h.drop_conn(c);
    let t = h.connect(Codec::Text);
    h.send_msg(
        t,
        cmd::RESUME,
        1,
        &ResumeRequest { resume_token: login.resume_token.clone(), last_server_seq: 0, ..Default::default() },
    );
    assert!(h.expect_error(t, ErrorCode::ResumeFailed).message.contains("protobuf"));
    let p = h.connect(Codec::Protobuf);
    h.send_msg(
        p,
        cmd::RESUME,
        1,
        &ResumeRequest { resume_token: "forged".into(), last_server_seq: 0, ..Default::default() },
    );
    assert!(h.expect_error(p, ErrorCode::ResumeFailed).message.contains("invalid"));
    // The refusals did not harm the session: it still resumes.
    let frames = resume(&mut h, p, &login.resume_token, 0);
    assert_eq!(frames[0].cmd, cmd::RESUME);
}

#[test]
fn resuming_while_the_old_connection_looks_alive_takes_it_over() {
    let mut h = Harness::new("");
    h.links_up();
    let old = h.connect(Codec::Protobuf);
    let login = h.login(old, "al");
    let new = h.connect(Codec::Protobuf);
    let frames = resume(&mut h, new, &login.resume_token, 0);
    assert_eq!(frames[0].cmd, cmd::RESUME);
    assert!(h.closed.contains(&old));
    assert_eq!(h.take(old).last().unwrap().cmd, cmd::KICK);
    push_to_user(&mut h, "al", "x");
    assert_eq!(payloads(&h.take(new)), ["x"]);
}

#[test]
fn a_replay_buffer_overflow_ends_the_session_with_a_reason() {
    let mut h = Harness::new("[sessions]\nreplay_max_messages = 5");
    h.links_up();
    let c = h.connect(Codec::Protobuf);
    h.login(c, "al");
    for i in 0..5 {
        push_to_user(&mut h, "al", &format!("m{i}"));
    }
    assert!(!h.closed.contains(&c));
    push_to_user(&mut h, "al", "one too many");
    assert!(h.closed.contains(&c));
    let frames = h.take(c);
    let kick: Kick = h.form(c).decode(&frames.last().unwrap().payload).unwrap();
    assert!(kick.reason.contains("replay buffer overflow"), "{kick:?}");
    assert_eq!(h.cores[0].shared().user_count(), 0, "ended, not kept for resume");
    // A client that acknowledges never overflows.
    let c = h.connect(Codec::Protobuf);
    h.login(c, "bo");
    for i in 0..20 {
        push_to_user(&mut h, "bo", &format!("m{i}"));
        let seq = h.take(c)[0].server_seq;
        h.send(c, &Envelope { ack: seq, ..Envelope::new(cmd::ACK, 0, 0, b"") });
    }
    assert!(!h.closed.contains(&c));
}

#[test]
fn in_flight_requests_of_a_failed_server_are_answered_and_traffic_moves() {
    let mut h = Harness::new("");
    h.links_up();
    let c = h.connect(Codec::Protobuf);
    h.login(c, "al");
    for seq in 10..14 {
        h.send(c, &Envelope::new(1000, seq, 0, b"x"));
    }
    assert_eq!(h.cores[0].requests_in_flight(), 4);
    h.link_frames(1);
    // Server 0 dies with its two requests unanswered.
    h.cores[0].handle_link_closed(h.now, 0);
    h.flush();
    let errors = h.take(c);
    assert_eq!(errors.len(), 2);
    for e in &errors {
        let m: ErrorMsg = h.form(c).decode(&e.payload).unwrap();
        assert_eq!(m.code, ErrorCode::BackendUnavailable as i32);
        assert!([10, 12].contains(&e.seq), "{e:?}");
    }
    // Everything new goes to server 1.
    for seq in 20..24 {
        h.send(c, &Envelope::new(1000, seq, 0, b"x"));
    }
    assert_eq!(h.echo_requests(1), 4);
    assert_eq!(h.take(c).len(), 4);
    // It comes back after the backoff and takes traffic again.
    h.advance(Duration::from_millis(100));
    h.links_up();
    for seq in 30..34 {
        h.send(c, &Envelope::new(1000, seq, 0, b"x"));
    }
    assert_eq!(h.link_frames(0).len(), 2);
}

#[test]
fn a_server_that_stops_answering_health_checks_is_dropped() {
    let mut h = Harness::new("[backends]\nhealth_interval_ms = 1000\nhealth_timeout_ms = 3000");
    h.links_up();
    let c = h.connect(Codec::Protobuf);
    h.login(c, "al");
    h.advance(Duration::from_secs(5));
    assert_eq!(h.cores[0].links_up(), 2, "pongs keep links up");
    h.muted.insert((0, 1));
    h.send(c, &Envelope::new(1000, 1, 0, b"x"));
    h.send(c, &Envelope::new(1000, 2, 0, b"x"));
    h.advance(Duration::from_secs(1));
    h.advance(Duration::from_secs(3));
    assert_eq!(h.cores[0].links_up(), 1);
    let frames = h.take(c);
    assert_eq!(frames.len(), 1, "the request on the silent server was answered: {frames:?}");
    assert!(h.form(c).decode::<ErrorMsg>(&frames[0].payload).unwrap().message.contains("health check"));
}

#[test]
fn unanswered_requests_time_out_with_an_error() {
    let mut h = Harness::new("[backends]\nrequest_timeout_ms = 2000");
    h.links_up();
    let c = h.connect(Codec::Protobuf);
    h.login(c, "al");
    h.send(c, &Envelope::new(1000, 7, 0, b"x"));
    h.advance(Duration::from_millis(1_000));
    assert!(h.take(c).is_empty());
    h.advance(Duration::from_millis(1_100));
    let e = h.expect_error(c, ErrorCode::BackendTimeout);
    assert_eq!(e.cmd, 1000);
    // Silent replies complete a request without an answer.
    h.send(c, &Envelope::new(1000, 8, 0, b"x"));
    let Kind::Request(r) = h.link_frames(0).pop().or_else(|| h.link_frames(1).pop()).unwrap() else { panic!() };
    let link = if h.cores[0].links[0].inflight.is_empty() { 1 } else { 0 };
    h.server_sends(
        link,
        Kind::Reply(pbl::Reply {
            session_id: r.session_id,
            request_id: r.request_id,
            silent: true,
            ..Default::default()
        }),
    );
    h.advance(Duration::from_secs(3));
    assert!(h.take(c).is_empty());
    assert_eq!(h.cores[0].requests_in_flight(), 0);
}

#[test]
fn a_draining_server_keeps_its_sticky_sessions_and_gets_no_new_ones() {
    let mut h = Harness::new("");
    // Make the game service sticky.
    let mut c = config("");
    c.services[0].sticky = true;
    let shared = Shared::new(1, [7; 32]);
    h.cores[0] =
        Gateway::new(&c, 0, shared, crate::auth::from_config(&c).unwrap(), h.now, Duration::from_secs(UNIX_START));
    h.connects.clear();
    h.flush();
    h.links_up();
    let a = h.connect(Codec::Protobuf);
    h.login(a, "al");
    h.send(a, &Envelope::new(1000, 1, 0, b"x"));
    let stuck = if h.link_frames(0).is_empty() { 1 } else { 0 };
    h.link_sent.clear();
    for seq in 2..6 {
        h.send(a, &Envelope::new(1000, seq, 0, b"x"));
    }
    assert_eq!(h.link_frames(stuck).len(), 4, "sticky");
    h.server_sends(stuck, Kind::Status(pbl::Status { draining: true }));
    for seq in 6..9 {
        h.send(a, &Envelope::new(1000, seq, 0, b"x"));
    }
    assert_eq!(h.link_frames(stuck).len(), 3, "existing sticky session stays while draining");
    for i in 0..4 {
        let b = h.connect(Codec::Protobuf);
        h.login(b, &format!("new{i}"));
        h.send(b, &Envelope::new(1000, 1, 0, b"x"));
    }
    assert!(h.link_frames(stuck).is_empty(), "no new sessions on a draining server");
    assert_eq!(h.link_frames(1 - stuck).len(), 4);
}

#[test]
fn delegate_authentication_binds_the_user_the_auth_service_returns() {
    use portcullis_proto::pb::link::AuthResult;
    let mut h = Harness::new("");
    let mut c = config("");
    c.auth = crate::config::AuthConfig::Delegate { service: "game".into(), timeout_ms: 1000 };
    h.cores[0] = Gateway::new(
        &c,
        0,
        Shared::new(1, [7; 32]),
        crate::auth::from_config(&c).unwrap(),
        h.now,
        Duration::from_secs(UNIX_START),
    );
    h.connects.clear();
    h.flush();
    h.links_up();
    let conn = h.connect(Codec::Json);
    h.send(conn, &Envelope::new(cmd::LOGIN, 1, 0, br#"{"token":"user=carol;pw=x"}"#));
    let (link, req) = h.first_request().expect("the login reached the auth service");
    assert_eq!(req.cmd, cmd::LOGIN);
    let forwarded = LoginRequest::decode(&req.payload[..]).unwrap();
    assert_eq!(forwarded.token, "user=carol;pw=x", "normalised to protobuf");
    let result = AuthResult { user_id: "carol".into(), device: "web".into(), role: "moderator".into() };
    h.server_sends(
        link,
        Kind::Reply(pbl::Reply {
            session_id: req.session_id,
            cmd: cmd::LOGIN,
            seq: req.seq,
            payload: result.encode_to_vec(),
            request_id: req.request_id,
            ..Default::default()
        }),
    );
    let frames = h.take(conn);
    let reply: LoginReply = h.form(conn).decode(&frames[0].payload).unwrap();
    assert_eq!((reply.user_id.as_str(), reply.device.as_str()), ("carol", "web"));
    // Refused by the service, then a service that never answers.
    let d = h.connect(Codec::Protobuf);
    h.send_msg(d, cmd::LOGIN, 1, &LoginRequest { token: "bad".into(), ..Default::default() });
    let (link, req) = h.first_request().unwrap();
    h.server_sends(
        link,
        Kind::Reply(pbl::Reply {
            session_id: req.session_id,
            request_id: req.request_id,
            error: 403,
            error_message: "wrong password".into(),
            ..Default::default()
        }),
    );
    assert!(h.expect_error(d, ErrorCode::AuthFailed).message.contains("wrong password"));
    h.send_msg(d, cmd::LOGIN, 2, &LoginRequest { token: "slow".into(), ..Default::default() });
    h.advance(Duration::from_millis(1_100));
    assert!(h.expect_error(d, ErrorCode::AuthFailed).message.contains("in time"));
}

#[test]
fn rate_limits_answer_throttled_and_connection_limits_refuse() {
    let mut h = Harness::new("[limits]\nsession_rate = 10\nsession_burst = 5\nmax_connections_per_ip = 2");
    let c = h.connect(Codec::Protobuf);
    h.login(c, "al");
    let mut burst = Vec::new();
    for seq in 1..=8 {
        burst.extend(h.frame(c, &Envelope::new(cmd::HEARTBEAT, seq, 0, b"")));
    }
    h.raw(c, &burst);
    let frames = h.take(c);
    // The LOGIN came before login: the address's bucket counted it.
    assert_eq!(frames.iter().filter(|f| f.cmd == cmd::HEARTBEAT).count(), 5);
    let throttled: Vec<&Envelope<'_>> = frames.iter().filter(|f| f.cmd == cmd::ERROR).collect();
    assert_eq!(throttled.len(), 3);
    for e in &throttled {
        let e: ErrorMsg = h.form(c).decode(&e.payload).unwrap();
        assert_eq!(e.code, ErrorCode::Throttled as i32);
    }
    assert!(
        throttled.iter().all(|e| e.server_seq == 0),
        "refusals are not sequenced: they never fill the replay buffer"
    );
    h.advance(Duration::from_millis(300));
    h.send(c, &Envelope::new(cmd::HEARTBEAT, 9, 0, b""));
    assert_eq!(h.take(c)[0].cmd, cmd::HEARTBEAT, "refilled");
    let _second = h.connect(Codec::Protobuf);
    let third = h.connect(Codec::Protobuf);
    assert!(h.expect_error(third, ErrorCode::Throttled).message.contains("too many connections"));
    assert!(h.closed.contains(&third));
}

#[test]
fn two_workers_deliver_p2p_and_group_messages_through_their_rings() {
    let mut h = Harness::with_workers("", 2);
    let a = h.connect_on(0, Codec::Protobuf);
    let b = h.connect_on(1, Codec::Json);
    let b2 = h.connect_on(1, Codec::Protobuf);
    h.login(a, "al");
    h.login(b, "bo");
    h.login(b2, "bo");
    h.send_msg(a, cmd::SEND_TO_USER, 2, &SendToUser { user_id: "bo".into(), payload: b"hi bo".to_vec() });
    let r: SendResult = h.form(a).decode(&h.take(a)[0].payload).unwrap();
    assert_eq!(r.delivered, 2);
    for conn in [b, b2] {
        let frames = h.take(conn);
        let d: Delivery = h.form(conn).decode(&frames[0].payload).unwrap();
        assert_eq!((d.from_user_id.as_str(), &d.payload[..]), ("al", &b"hi bo"[..]));
    }
    for conn in [a, b, b2] {
        h.send_msg(conn, cmd::JOIN_GROUP, 3, &GroupRequest { group: "room".into() });
        h.take(conn);
    }
    h.send_msg(
        b,
        cmd::SEND_TO_GROUP,
        4,
        &SendToGroup { group: "room".into(), payload: b"hello room".to_vec(), include_self: false },
    );
    let r: SendResult = h.form(b).decode(&h.take(b)[0].payload).unwrap();
    assert_eq!(r.delivered, 2);
    assert_eq!(h.take(a).len(), 1);
    assert_eq!(h.take(b2).len(), 1);
    assert!(h.take(b).is_empty(), "the sender is excluded");
    assert!(h.cores[0].stats().cross_worker + h.cores[1].stats().cross_worker >= 2);
}

#[test]
fn two_workers_apply_multi_login_and_hand_sessions_over_on_resume() {
    let mut h = Harness::with_workers("[sessions]\nmulti_login = \"single\"", 2);
    let first = h.connect_on(0, Codec::Protobuf);
    h.login(first, "al");
    let second = h.connect_on(1, Codec::Protobuf);
    let login = h.login(second, "al");
    assert!(h.closed.contains(&first), "kicked across workers");
    assert_eq!(h.take(first).last().unwrap().cmd, cmd::KICK);
    // Session on worker 1 joins a group with a member on worker 0.
    h.send_msg(second, cmd::JOIN_GROUP, 2, &GroupRequest { group: "room".into() });
    h.take(second);
    let friend = h.connect_on(0, Codec::Protobuf);
    h.login(friend, "fr");
    h.send_msg(friend, cmd::JOIN_GROUP, 2, &GroupRequest { group: "room".into() });
    h.take(friend);
    h.drop_conn(second);
    h.send_msg(
        friend,
        cmd::SEND_TO_GROUP,
        3,
        &SendToGroup { group: "room".into(), payload: b"while away".to_vec(), include_self: false },
    );
    h.take(friend);
    // The client comes back on worker 0: the session moves there.
    let back = h.connect_on(0, Codec::Protobuf);
    let frames = resume(&mut h, back, &login.resume_token, 1);
    assert_eq!(frames[0].cmd, cmd::RESUME, "{frames:?}");
    let d: Delivery = h.form(back).decode(&frames[1].payload).unwrap();
    assert_eq!(d.payload, b"while away");
    assert_eq!(h.cores[0].shared().owner_of(login.session_id), 0);
    assert!(h.cores[1].sessions().get(login.session_id).is_none());
    assert_eq!(&*h.cores[0].shared().group_counts("room"), &[2, 0]);
    // It is reachable at its new home.
    h.send_msg(friend, cmd::SEND_TO_USER, 4, &SendToUser { user_id: "al".into(), payload: b"welcome back".to_vec() });
    h.take(friend);
    let frames = h.take(back);
    let d: Delivery = h.form(back).decode(&frames[0].payload).unwrap();
    assert_eq!(d.payload, b"welcome back");
}

#[test]
fn send_to_self_and_other_devices_after_a_kick() {
    let mut h = Harness::new("[sessions]\nmulti_login = \"multi-device\"\nmax_devices = 2");
    let conns: Vec<_> = (0..3).map(|_| h.connect(Codec::Protobuf)).collect();
    for (i, &c) in conns.iter().enumerate() {
        h.login_as(c, "al", &format!("d{i}"));
    }
    h.send_msg(conns[1], cmd::SEND_TO_USER, 2, &SendToUser { user_id: "al".into(), payload: b"all mine".to_vec() });
    let frames = h.take(conns[1]);
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(h.take(conns[2]).len(), 1);
}

#[test]
fn a_peer_cannot_end_another_session_by_flooding_it() {
    let mut h = Harness::new("[sessions]\nreplay_max_messages = 10");
    let victim = h.connect(Codec::Protobuf);
    h.login(victim, "victim");
    let attacker = h.connect(Codec::Protobuf);
    h.login(attacker, "attacker");
    let mut delivered = Vec::new();
    for i in 0..20 {
        h.send_msg(attacker, cmd::SEND_TO_USER, i, &SendToUser { user_id: "victim".into(), payload: b"spam".to_vec() });
        let answer = h.take(attacker).remove(0);
        let r: SendResult = h.form(attacker).decode(&answer.payload).unwrap();
        delivered.push(r.delivered);
        // The attacker itself acknowledges, so its own buffer never fills.
        h.send(attacker, &Envelope { ack: answer.server_seq, ..Envelope::new(cmd::ACK, 0, 0, b"") });
    }
    assert!(!h.closed.contains(&victim), "the victim's session survives");
    assert_eq!(delivered.iter().sum::<u32>(), 5, "refused once half the replay buffer waits: {delivered:?}");
    assert_eq!(h.cores[0].stats().drop_recipient_backlog, 15);
    // Once the victim acknowledges, messages flow again.
    let last = h.take(victim).last().unwrap().server_seq;
    h.send(victim, &Envelope { ack: last, ..Envelope::new(cmd::ACK, 0, 0, b"") });
    h.send_msg(attacker, cmd::SEND_TO_USER, 99, &SendToUser { user_id: "victim".into(), payload: b"hi".to_vec() });
    let r: SendResult = h.form(attacker).decode(&h.take(attacker)[0].payload).unwrap();
    assert_eq!(r.delivered, 1);
}

#[test]
fn replies_go_where_the_request_came_from_whatever_the_server_claims() {
    let mut h = Harness::new("");
    h.links_up();
    let a = h.connect(Codec::Protobuf);
    let la = h.login(a, "al");
    let b = h.connect(Codec::Protobuf);
    let lb = h.login(b, "bo");
    h.send(a, &Envelope::new(1000, 7, 0, b"mine"));
    let (link, req) = h.first_request().unwrap();
    assert_eq!(req.session_id, la.session_id);
    // A confused game server names another session and sequence number.
    let reply = pbl::Reply {
        session_id: lb.session_id,
        cmd: 1000,
        seq: 99,
        payload: b"mine".to_vec(),
        request_id: req.request_id,
        ..Default::default()
    };
    h.server_sends(link, Kind::Reply(reply));
    assert!(h.take(b).is_empty(), "nothing leaks to another session");
    let frames = h.take(a);
    assert_eq!((frames[0].seq, &*frames[0].payload), (7, &b"mine"[..]));
}

#[test]
fn a_game_server_hears_of_sessions_that_ended_while_its_link_was_down() {
    let mut h = Harness::new("");
    h.links_up();
    let c = h.connect(Codec::Protobuf);
    let login = h.login(c, "al");
    for seq in 1..=4 {
        h.send(c, &Envelope::new(1000, seq, 0, b"x"));
    }
    h.link_sent.clear();
    h.cores[0].handle_link_closed(h.now, 0);
    h.send(c, &Envelope::new(cmd::LOGOUT, 9, 0, b""));
    assert!(h.link_frames(0).is_empty());
    h.advance(Duration::from_millis(150));
    h.links_up_keeping_frames();
    let frames = h.link_frames(0);
    assert!(
        frames.iter().any(|k| matches!(k, Kind::SessionClosed(s) if s.session_id == login.session_id)),
        "{frames:?}"
    );
}

#[test]
fn the_check_stage_refuses_in_chain_order_and_counts_each_reason() {
    let mut h = Harness::new("max_bad_frames = 5\n[limits]\nip_rate = 1\nip_burst = 1");
    let c = h.connect(Codec::Protobuf);
    // compliance, handshake state: a framework command and a business
    // command before LOGIN (refused before the rate link charges them).
    h.send_msg(c, cmd::JOIN_GROUP, 1, &GroupRequest { group: "g".into() });
    h.expect_error(c, ErrorCode::NotLoggedIn);
    h.send(c, &Envelope::new(1000, 2, 0, b"x"));
    h.expect_error(c, ErrorCode::NotLoggedIn);
    h.send(c, &Envelope::new(cmd::HEARTBEAT, 3, 0, b""));
    assert_eq!(h.take(c)[0].cmd, cmd::HEARTBEAT);
    // rate: the heartbeat took the address's only token.
    h.send(c, &Envelope::new(cmd::HEARTBEAT, 4, 0, b""));
    h.expect_error(c, ErrorCode::Throttled);
    // compliance, envelope: a flag only the gateway sets.
    h.send(c, &Envelope::new(cmd::HEARTBEAT, 5, flags::RESPONSE, b""));
    h.expect_error(c, ErrorCode::BadFrame);
    assert!(!h.closed.contains(&c));
    // compliance, codec: not rate-limited; before login every ERROR counted:
    // the fifth (max_bad_frames) closes the connection.
    h.raw(c, &[0, 0, 0, 2, 0xff, 0xff]);
    h.expect_error(c, ErrorCode::BadFrame);
    assert!(h.closed.contains(&c));
    let s = h.cores[0].stats();
    let counts = (s.drop_not_logged_in, s.drop_throttled, s.drop_bad_envelope, s.drop_bad_frame, s.frames_in);
    assert_eq!(counts, (2, 1, 1, 1, 5));
}
