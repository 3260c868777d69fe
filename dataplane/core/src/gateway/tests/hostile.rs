//! A hostile internet, in memory with simulated time: connections that never
//! log in, strangers sharing an address with players, floods of one player
//! by another, delivery counted across workers, spent resume tokens, frames
//! over the limit both ways, and the output memory budget.

use super::*;
use portcullis_proto::pb::client::{ResumeReply, ResumeRequest};

fn heartbeat(h: &mut Harness, conn: ConnId, seq: u32) {
    h.send(conn, &Envelope::new(cmd::HEARTBEAT, seq, 0, b""));
}

fn error_codes(h: &mut Harness, conn: ConnId) -> Vec<i32> {
    let form = h.form(conn);
    h.take(conn)
        .iter()
        .filter(|f| f.cmd == cmd::ERROR)
        .map(|f| form.decode::<ErrorMsg>(&f.payload).unwrap().code)
        .collect()
}

#[test]
fn a_connection_that_does_not_log_in_is_closed_at_the_login_deadline_whatever_it_sends() {
    let mut h = Harness::new("login_timeout_ms = 2000");
    let stranger = h.connect(Codec::Protobuf);
    let player = h.connect(Codec::Protobuf);
    h.login(player, "al");
    for seq in 1..=12 {
        // A byte every half second: each one used to reset the idle timer.
        heartbeat(&mut h, stranger, seq);
        h.advance(Duration::from_millis(250));
        h.send(player, &Envelope::new(cmd::HEARTBEAT, seq, 0, b""));
        h.advance(Duration::from_millis(250));
        if h.closed.contains(&stranger) {
            break;
        }
    }
    assert!(h.closed.contains(&stranger), "closed within the deadline and one sweep");
    let frames = h.take(stranger);
    let last = frames.last().expect("told why");
    let e: ErrorMsg = h.form(stranger).decode(&last.payload).unwrap();
    assert_eq!((last.cmd, e.code, last.server_seq), (cmd::ERROR, ErrorCode::LoginTimeout as i32, 0));
    assert!(!h.closed.contains(&player), "a player who logged in stays");
    assert_eq!(h.cores[0].stats().login_timeouts, 1);
}

#[test]
fn output_before_login_is_bounded_and_every_error_before_login_counts_as_a_bad_frame() {
    let mut h = Harness::new("max_outbound_before_login_bytes = 512");
    // A stranger that never reads: its heartbeat answers pile up to 512 bytes.
    let hoarder = h.connect(Codec::Protobuf);
    h.not_reading.insert(hoarder);
    for seq in 1..=200 {
        heartbeat(&mut h, hoarder, seq);
        if h.closed.contains(&hoarder) {
            break;
        }
    }
    assert!(h.closed.contains(&hoarder));
    assert_eq!(h.cores[0].stats().drop_prelogin_output, 1);
    assert_eq!(h.cores[0].output_bytes(), 0, "nothing of it is kept");
    // A stranger provoking errors: NOT_LOGGED_IN is an ERROR before login,
    // and the eighth (max_bad_frames) closes the connection.
    let prober = h.connect(Codec::Protobuf);
    for seq in 1..=7 {
        h.send(prober, &Envelope::new(1000, seq, 0, b"x"));
        assert_eq!(error_codes(&mut h, prober), [ErrorCode::NotLoggedIn as i32]);
        assert!(!h.closed.contains(&prober));
    }
    h.send(prober, &Envelope::new(1000, 8, 0, b"x"));
    assert!(h.closed.contains(&prober));
    // After login, refusals are the player's business: no bad-frame count.
    let player = h.connect(Codec::Protobuf);
    h.login(player, "al");
    for seq in 1..=7 {
        h.send_msg(player, cmd::JOIN_GROUP, seq, &GroupRequest { group: String::new() });
    }
    assert!(!h.closed.contains(&player), "after login only refused frames count, not every ERROR");
}

#[test]
fn strangers_behind_a_shared_address_cannot_throttle_or_crowd_out_its_players() {
    let mut h = Harness::new("[limits]\nip_rate = 10\nip_burst = 20\nmax_prelogin_per_ip = 3");
    let players: Vec<ConnId> = (0..2).map(|_| h.connect(Codec::Protobuf)).collect();
    for (i, &p) in players.iter().enumerate() {
        h.login(p, &format!("player{i}"));
    }
    // Junk from the same address drains the address's bucket…
    let junk = h.connect(Codec::Protobuf);
    let mut throttled = 0;
    for seq in 1..=100 {
        h.send(junk, &Envelope::new(cmd::ACK, seq, 0, b""));
        throttled += error_codes(&mut h, junk).iter().filter(|&&c| c == ErrorCode::Throttled as i32).count();
        if h.closed.contains(&junk) {
            break;
        }
    }
    assert!(throttled > 0, "the strangers' budget ran out");
    // …and the players behind it are not throttled.
    for &p in &players {
        for seq in 10..60 {
            heartbeat(&mut h, p, seq);
        }
        let frames = h.take(p);
        assert_eq!(frames.iter().filter(|f| f.cmd == cmd::HEARTBEAT).count(), 50);
    }
    // At most three strangers of one address at a time; players do not count.
    let strangers: Vec<ConnId> = (0..3).map(|_| h.connect(Codec::Protobuf)).collect();
    assert!(strangers.iter().all(|c| !h.closed.contains(c)));
    let fourth = h.connect(Codec::Protobuf);
    assert!(h.expect_error(fourth, ErrorCode::Throttled).message.contains("not logged in"));
    assert!(h.closed.contains(&fourth));
    // A stranger's first LOGIN is not charged to the address's drained
    // bucket: junk cannot keep the players of an address from logging in.
    h.login(strangers[0], "player2");
    let fifth = h.connect(Codec::Protobuf);
    assert!(!h.closed.contains(&fifth), "a login made room");
    // Another address is not affected at all.
    let elsewhere = h.connect_from(0, Codec::Protobuf, [10, 1, 2, 3]);
    assert!(!h.closed.contains(&elsewhere));
}

#[test]
fn a_flooded_player_gets_no_more_than_its_inbound_rate_and_fan_out_is_bounded() {
    let limits = "[limits]\npeer_inbound_rate = 10\npeer_inbound_burst = 20\nmax_recipients = 3\npair_rate = 1000\npair_burst = 1000";
    let mut h = Harness::new(limits);
    let victim = h.connect(Codec::Protobuf);
    h.login(victim, "victim");
    let friend = h.connect(Codec::Protobuf);
    h.login(friend, "friend");
    // One user on four devices names the victim as fast as it can.
    let spammers: Vec<ConnId> = (0..4).map(|_| h.connect(Codec::Protobuf)).collect();
    for (i, &s) in spammers.iter().enumerate() {
        h.login_as(s, "spammer", ["ios", "android", "pc", "web"][i]);
    }
    let mut delivered = 0;
    for round in 0..50u32 {
        for &s in &spammers {
            let msg = SendToUsers { user_ids: vec!["victim".into()], payload: b"spam".to_vec() };
            h.send_msg(s, cmd::SEND_TO_USERS, round + 2, &msg);
            for f in h.take(s) {
                delivered += h.form(s).decode::<SendResult>(&f.payload).unwrap().delivered;
            }
        }
        h.advance(Duration::from_millis(10));
    }
    // 200 sent over 0.5 s: the burst of 20 and 10/s.
    let got = h.take(victim).iter().filter(|f| f.cmd == cmd::SEND_TO_USERS).count() as u32;
    assert!((20..=26).contains(&got), "{got}");
    assert_eq!(delivered, got, "each sender was told whether its message was delivered");
    assert_eq!(h.cores[0].stats().drop_recipient_rate, u64::from(200 - got));
    // The victim's friends still reach it: the bucket refills.
    h.advance(Duration::from_secs(1));
    h.send_msg(friend, cmd::SEND_TO_USER, 2, &SendToUser { user_id: "victim".into(), payload: b"hi".to_vec() });
    assert_eq!(h.form(friend).decode::<SendResult>(&h.take(friend)[0].payload).unwrap().delivered, 1);
    // Fan-out: at most max_recipients user ids per SEND_TO_USERS.
    let many = SendToUsers { user_ids: (0..4).map(|i| format!("u{i}")).collect(), payload: b"x".to_vec() };
    h.send_msg(friend, cmd::SEND_TO_USERS, 3, &many);
    assert!(h.expect_error(friend, ErrorCode::BadPayload).message.contains("more than 3 recipients"));
}

#[test]
fn delivered_counts_what_was_queued_on_whichever_worker_the_recipient_lives() {
    let mut h = Harness::with_workers("[sessions]\nreplay_max_messages = 4", 2);
    let sender = h.connect_on(0, Codec::Protobuf);
    h.login(sender, "al");
    let far = h.connect_on(1, Codec::Protobuf);
    h.login(far, "bo");
    h.not_reading.insert(far);
    let mut results = Vec::new();
    for seq in 2..6 {
        h.send_msg(sender, cmd::SEND_TO_USER, seq, &SendToUser { user_id: "bo".into(), payload: b"hi".to_vec() });
        let frames = h.take(sender);
        assert_eq!(frames.len(), 1, "one answer, after worker 1 counted");
        results.push(h.form(sender).decode::<SendResult>(&frames[0].payload).unwrap().delivered);
        let mut ack = Envelope::new(cmd::ACK, 0, 0, b"");
        ack.ack = frames[0].server_seq;
        h.send(sender, &ack);
    }
    // bo acknowledges nothing: its replay buffer is half full after two,
    // and worker 1 drops the rest — which the sender is told.
    assert_eq!(results, [1, 1, 0, 0]);
    assert_eq!(h.cores[1].stats().drop_recipient_backlog, 2);
    // Groups too: one member on each worker, the sender's own excluded.
    let near = h.connect_on(0, Codec::Protobuf);
    h.login(near, "cy");
    let far2 = h.connect_on(1, Codec::Protobuf);
    h.login(far2, "di");
    for (c, seq) in [(sender, 10), (near, 2), (far2, 2)] {
        h.send_msg(c, cmd::JOIN_GROUP, seq, &GroupRequest { group: "g".into() });
        h.take(c);
    }
    h.send_msg(
        sender,
        cmd::SEND_TO_GROUP,
        11,
        &SendToGroup { group: "g".into(), payload: b"all".to_vec(), include_self: false },
    );
    assert_eq!(h.form(sender).decode::<SendResult>(&h.take(sender)[0].payload).unwrap().delivered, 2);
    assert_eq!(h.cores[0].stats().send_results_late, 0);
}

#[test]
fn a_resume_token_works_once_and_the_answer_carries_the_next() {
    let mut h = Harness::with_workers("", 2);
    let first = h.connect_on(0, Codec::Protobuf);
    let login = h.login(first, "al");
    h.drop_conn(first);
    // Resumed on the other worker: a new token comes back.
    let second = h.connect_on(1, Codec::Protobuf);
    let resume = |h: &mut Harness, c: ConnId, token: &str| {
        h.send_msg(
            c,
            cmd::RESUME,
            7,
            &ResumeRequest { resume_token: token.into(), last_server_seq: 0, ..Default::default() },
        );
        h.take(c)
    };
    let frames = resume(&mut h, second, &login.resume_token);
    let reply: ResumeReply = h.form(second).decode(&frames[0].payload).unwrap();
    assert_eq!((frames[0].cmd, reply.session_id), (cmd::RESUME, login.session_id));
    assert!(!reply.resume_token.is_empty() && reply.resume_token != login.resume_token);
    // A thief with the old token gets nothing, and the owner keeps its session.
    let thief = h.connect_on(0, Codec::Protobuf);
    resume(&mut h, thief, &login.resume_token);
    assert!(!h.closed.contains(&second), "the owner was not kicked");
    let stolen = h.connect_on(1, Codec::Protobuf);
    let frames = resume(&mut h, stolen, &login.resume_token);
    let e: ErrorMsg = h.form(stolen).decode(&frames[0].payload).unwrap();
    assert_eq!(e.code, ErrorCode::ResumeFailed as i32);
    assert!(e.message.contains("already used"), "{e:?}");
    // The new token works, once.
    h.drop_conn(second);
    let third = h.connect_on(0, Codec::Protobuf);
    let frames = resume(&mut h, third, &reply.resume_token);
    assert_eq!(frames[0].cmd, cmd::RESUME, "{frames:?}");
}

#[test]
fn an_idle_player_is_told_heartbeat_timeout_and_its_session_waits_for_resume() {
    let mut h = Harness::new("");
    let c = h.connect(Codec::Protobuf);
    h.login(c, "al");
    h.advance(Duration::from_secs(31));
    assert!(h.closed.contains(&c));
    let frames = h.take(c);
    let e: ErrorMsg = h.form(c).decode(&frames[0].payload).unwrap();
    assert_eq!((frames[0].cmd, e.code, frames[0].server_seq), (cmd::ERROR, ErrorCode::HeartbeatTimeout as i32, 0));
    assert_eq!(h.cores[0].sessions().len(), 1, "detached, not ended");
}

#[test]
fn the_gateway_never_sends_a_frame_over_the_listener_limit() {
    let mut h = Harness::new("");
    h.links_up();
    let c = h.connect(Codec::Protobuf);
    h.login(c, "al");
    // An answer of 2 000 bytes on a listener of 1 024 becomes FRAME_TOO_LARGE.
    h.send(c, &Envelope::new(1000, 5, 0, b"question"));
    let (link, req) = h.first_request().unwrap();
    let reply = pbl::Reply {
        session_id: req.session_id,
        cmd: req.cmd,
        seq: req.seq,
        payload: vec![7; 2000],
        request_id: req.request_id,
        ..Default::default()
    };
    h.server_sends(link, Kind::Reply(reply));
    let frames = h.take(c);
    assert_eq!((frames.len(), frames[0].cmd, frames[0].seq), (1, cmd::ERROR, 5));
    let e: ErrorMsg = h.form(c).decode(&frames[0].payload).unwrap();
    assert_eq!(e.code, ErrorCode::FrameTooLarge as i32);
    // A push that large is dropped; the next one arrives with the next number.
    let push = |h: &mut Harness, len: usize| {
        let p = pbl::PushToUser { user_id: "al".into(), cmd: 1500, payload: vec![1; len], ..Default::default() };
        h.server_sends(link, Kind::PushToUser(p));
        h.take(c)
    };
    assert!(push(&mut h, 2000).is_empty());
    let next = push(&mut h, 10);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].server_seq, 1, "no gap: the dropped push gave its number back");
    assert_eq!(h.cores[0].stats().drop_frame_too_large_out, 2);
}

#[test]
fn past_the_output_budget_the_biggest_backlogs_are_cut_first() {
    let mut h = Harness::new("[limits]\nmax_output_memory_bytes = 8000");
    h.links_up();
    let readers: Vec<ConnId> = (0..2).map(|_| h.connect(Codec::Protobuf)).collect();
    let hoarders: Vec<ConnId> = (0..3).map(|_| h.connect(Codec::Protobuf)).collect();
    for (i, &c) in readers.iter().chain(&hoarders).enumerate() {
        h.login(c, &format!("u{i}"));
        h.send_msg(c, cmd::JOIN_GROUP, 2, &GroupRequest { group: "room".into() });
        h.take(c);
    }
    for &c in &hoarders {
        h.not_reading.insert(c);
    }
    // hoarder 0 stops reading first, so it holds the most when the budget
    // is passed.
    let extra = pbl::PushToUser { user_id: "u2".into(), cmd: 1500, payload: vec![0; 900], ..Default::default() };
    h.server_sends(0, Kind::PushToUser(extra));
    for _ in 0..4 {
        let p = pbl::PushToGroup { group: "room".into(), cmd: 1501, payload: vec![0; 900], ..Default::default() };
        h.server_sends(0, Kind::PushToGroup(p));
    }
    assert!(h.closed.contains(&hoarders[0]), "the biggest backlog went first");
    assert!(readers.iter().all(|c| !h.closed.contains(c)), "readers hold nothing");
    assert!(h.cores[0].stats().cut_output_memory >= 1);
    assert!(h.cores[0].output_bytes() <= 8000);
    assert_eq!(h.cores[0].sessions().len(), 5, "cut sessions wait for RESUME");
}

#[test]
fn an_expired_token_is_refused_to_the_millisecond() {
    let c = config("");
    let now = Instant::now();
    // The gateway starts 0.9 s into a Unix second; the token expires at the
    // next whole second.
    let start = Duration::from_millis(UNIX_START * 1000 + 900);
    let mut core = Gateway::new(&c, 0, Shared::new(1, [7; 32]), crate::auth::from_config(&c).unwrap(), now, start);
    let later = now + Duration::from_millis(200);
    assert_eq!(core.unix_time(later), UNIX_START + 1);
    let conn = ConnId::new(Transport::KernelTcp, 1);
    core.handle_connect(later, conn, 0, SocketAddr::from(([127, 0, 0, 1], 1)));
    let token = sign(
        SECRET.as_bytes(),
        &Claims { uid: "al".into(), dev: "pc".into(), exp: UNIX_START + 1, role: String::new() },
    );
    let mut frame = Vec::new();
    let body = PayloadForm::Protobuf.encode_to_vec(&LoginRequest { token, ..Default::default() });
    Codec::Protobuf.encode(&Envelope::new(cmd::LOGIN, 1, 0, &body), &mut frame);
    core.handle_data(later, conn, &frame);
    let out = core.outbound(conn).to_vec();
    let (r, _) = Framing::LengthPrefixed.next_frame(&out, usize::MAX).unwrap().unwrap();
    let env = Codec::Protobuf.decode(&out[r]).unwrap();
    let e: ErrorMsg = PayloadForm::Protobuf.decode(&env.payload).unwrap();
    assert_eq!(e.code, ErrorCode::AuthFailed as i32);
    assert!(e.message.contains("expired"), "{e:?}");
}

#[test]
fn a_long_text_line_in_one_byte_pieces_is_one_frame() {
    let mut h = Harness::new("");
    let c = h.connect(Codec::Text);
    let line = format!("{} 1 0 - {}\n", cmd::HEARTBEAT, "x".repeat(900));
    for b in line.as_bytes() {
        h.raw(c, std::slice::from_ref(b));
    }
    let frames = h.take(c);
    assert_eq!((frames.len(), frames[0].cmd, frames[0].seq), (1, cmd::HEARTBEAT, 1), "{frames:?}");
}

#[test]
fn a_stranger_cannot_hold_a_large_partial_frame() {
    let mut h = Harness::new("max_frame_before_login_bytes = 256");
    let c = h.connect(Codec::Protobuf);
    // The prefix of a 1 000-byte frame: within the listener's 1 024, over
    // the strangers' 256.
    h.raw(c, &[0, 0, 3, 232, 1, 2, 3]);
    assert!(h.expect_error(c, ErrorCode::FrameTooLarge).message.contains("256"));
    assert!(h.closed.contains(&c));
    // After login the listener's limit applies.
    let p = h.connect(Codec::Protobuf);
    h.login(p, "al");
    h.send(p, &Envelope::new(cmd::HEARTBEAT, 2, 0, &[0; 900]));
    assert_eq!(h.take(p)[0].cmd, cmd::HEARTBEAT);
}

#[test]
fn a_spammer_cannot_use_up_a_recipients_inbound_rate() {
    let limits = "[limits]\npeer_inbound_rate = 50\npeer_inbound_burst = 50\npair_rate = 10\npair_burst = 10";
    let mut h = Harness::new(limits);
    let victim = h.connect(Codec::Protobuf);
    h.login(victim, "victim");
    let friend = h.connect(Codec::Protobuf);
    h.login(friend, "friend");
    let spammer = h.connect(Codec::Protobuf);
    h.login(spammer, "spammer");
    let (mut friend_delivered, mut spam_delivered) = (0, 0);
    for round in 0..100u32 {
        let spam = SendToUser { user_id: "victim".into(), payload: b"spam".to_vec() };
        for i in 0..10 {
            h.send_msg(spammer, cmd::SEND_TO_USER, round * 10 + i + 2, &spam);
        }
        for f in h.take(spammer) {
            spam_delivered += h.form(spammer).decode::<SendResult>(&f.payload).unwrap().delivered;
        }
        let hello = SendToUser { user_id: "victim".into(), payload: b"hello".to_vec() };
        h.send_msg(friend, cmd::SEND_TO_USER, round + 2, &hello);
        friend_delivered += h.form(friend).decode::<SendResult>(&h.take(friend)[0].payload).unwrap().delivered;
        h.take(victim);
        h.advance(Duration::from_millis(100));
    }
    // 10 s: the spammer's pair rate is 10/s (and a burst of 10), the
    // friend's 1/s all get through.
    assert_eq!(friend_delivered, 100, "nothing the friend sent was lost");
    assert!((100..=111).contains(&spam_delivered), "{spam_delivered}");
    assert_eq!(h.cores[0].stats().drop_recipient_rate, 0);
    assert_eq!(h.cores[0].stats().drop_pair_rate, u64::from(1000 - spam_delivered));
}

#[test]
fn a_connection_far_over_its_rate_for_long_is_closed_as_a_flood() {
    let limits = "[limits]\nsession_rate = 10\nsession_burst = 10\nmax_refusals_per_sec = 5\nmax_refusals_burst = 50";
    let mut h = Harness::new(limits);
    let c = h.connect(Codec::Protobuf);
    h.login(c, "flooder");
    let flood: Vec<u8> = (0..100).flat_map(|seq| h.frame(c, &Envelope::new(cmd::HEARTBEAT, seq, 0, b""))).collect();
    h.raw(c, &flood);
    let frames = h.take(c);
    assert_eq!(frames.iter().filter(|f| f.cmd == cmd::HEARTBEAT).count(), 10);
    let errors: Vec<ErrorMsg> =
        frames.iter().filter(|f| f.cmd == cmd::ERROR).map(|f| h.form(c).decode(&f.payload).unwrap()).collect();
    // Every refusal answered: 50 within the refusal burst, the 51st closes.
    assert_eq!(errors.len(), 51);
    assert!(errors.iter().all(|e| e.code == ErrorCode::Throttled as i32));
    assert!(errors[50].message.contains("flooding"), "{:?}", errors[50]);
    assert!(h.closed.contains(&c));
    assert_eq!(h.cores[0].stats().closed_flooding, 1);
    assert_eq!(h.cores[0].sessions().len(), 0, "a flood's session ends: no RESUME");
    // A client that bursts over its rate now and then is never closed.
    let bursty = h.connect(Codec::Protobuf);
    h.login(bursty, "bursty");
    for round in 0..5u32 {
        let burst: Vec<u8> =
            (0..30).flat_map(|i| h.frame(bursty, &Envelope::new(cmd::HEARTBEAT, round * 30 + i, 0, b""))).collect();
        h.raw(bursty, &burst);
        h.take(bursty);
        h.advance(Duration::from_secs(5));
    }
    assert!(!h.closed.contains(&bursty));
}
