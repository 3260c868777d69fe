//! The security chain, link by link, in memory with simulated time.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use super::*;

fn token_with_role(user: &str, role: &str) -> String {
    sign(SECRET.as_bytes(), &Claims { uid: user.into(), dev: "pc".into(), exp: UNIX_START + 3600, role: role.into() })
}

impl Harness {
    fn login_with(&mut self, conn: ConnId, token: String) {
        self.send_msg(conn, cmd::LOGIN, 1, &LoginRequest { token, ..Default::default() });
        let frames = self.take(conn);
        assert_eq!((frames.len(), frames[0].cmd, frames[0].flags), (1, cmd::LOGIN, flags::RESPONSE), "{frames:?}");
    }

    /// Sends business command `command` and says whether it reached a game
    /// server (true) or was refused with `code`.
    fn business(&mut self, conn: ConnId, command: u32, seq: u32) -> Result<(), ErrorCode> {
        self.send(conn, &Envelope::new(command, seq, 0, b"x"));
        let frames = self.take(conn);
        match frames.first() {
            None => Ok(()),
            Some(f) if f.cmd == cmd::ERROR => {
                let e: ErrorMsg = self.form(conn).decode(&f.payload).unwrap();
                Err(ErrorCode::try_from(e.code).unwrap())
            }
            Some(f) => panic!("unexpected {f:?}"),
        }
    }

    /// Records every block the core hands to the block sink.
    fn record_blocks(&mut self) -> Arc<Mutex<Vec<(IpAddr, Duration)>>> {
        let blocks = Arc::new(Mutex::new(Vec::new()));
        let sink = blocks.clone();
        self.cores[0].shared().set_block_sink(move |ip, ttl| sink.lock().unwrap().push((ip, ttl)));
        blocks
    }
}

const BEHAVIOUR: &str = "[security.behaviour]\nthrottle = 20\nkick = 40\nblock = 60\nblock_secs = 30\n\
                         decay_per_sec = 1\nbad_frame = 5\nfailed_login = 10\nrefusal = 1\nlogin = 5\nresume = 5";

#[test]
fn compliance_refuses_gateway_flags_server_fields_and_long_route_keys_as_bad_frames() {
    let mut h = Harness::new("max_bad_frames = 3");
    h.links_up();
    let c = h.connect(Codec::Protobuf);
    h.login(c, "alice");
    h.send(c, &Envelope::new(1000, 2, flags::PUSH, b"x"));
    assert!(h.expect_error(c, ErrorCode::BadFrame).message.contains("protocol"));
    let mut env = Envelope::new(1000, 3, 0, b"x");
    env.server_seq = 9;
    h.send(c, &env);
    h.expect_error(c, ErrorCode::BadFrame);
    assert!(!h.closed.contains(&c));
    let long = vec![b'r'; 129];
    let mut env = Envelope::new(1000, 4, 0, b"x");
    env.route_key = Some(std::borrow::Cow::Borrowed(&long));
    h.send(c, &env);
    h.expect_error(c, ErrorCode::BadFrame);
    assert!(h.closed.contains(&c), "the third bad frame closes");
    let s = h.cores[0].stats();
    assert_eq!((s.drop_bad_envelope, s.requests), (3, 0));
    // A route key at the limit is fine.
    let d = h.connect(Codec::Protobuf);
    h.login(d, "bob");
    let key = vec![b'r'; 128];
    let mut env = Envelope::new(1000, 5, 0, b"x");
    env.route_key = Some(std::borrow::Cow::Borrowed(&key));
    h.send(d, &env);
    assert!(h.take(d).is_empty());
    assert_eq!(h.cores[0].stats().requests, 1);
}

#[test]
fn a_command_class_has_its_own_rate_per_session() {
    let mut h =
        Harness::new("[[security.classes]]\nname = \"chat\"\ncommands = [1101, [1110, 1119]]\nrate = 5\nburst = 5");
    h.links_up();
    let (a, b) = (h.connect(Codec::Protobuf), h.connect(Codec::Json));
    h.login(a, "alice");
    h.login(b, "bob");
    let results: Vec<_> = (0..8).map(|i| h.business(a, 1101 + (i % 2) * 10, 10 + i)).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 5, "{results:?}");
    assert!(results[5..].iter().all(|r| *r == Err(ErrorCode::Throttled)));
    // Other commands and other sessions are not held back.
    assert_eq!(h.business(a, 1000, 30), Ok(()));
    assert_eq!(h.business(b, 1101, 31), Ok(()));
    // The bucket refills at 5/s.
    h.advance(Duration::from_millis(400));
    assert_eq!(h.business(a, 1101, 32), Ok(()));
    assert_eq!(h.business(a, 1101, 33), Ok(()));
    assert_eq!(h.business(a, 1101, 34), Err(ErrorCode::Throttled));
    assert_eq!(h.cores[0].stats().drop_command_rate, 4);
}

#[test]
fn the_whitelist_allows_commands_by_role_and_state() {
    let mut h = Harness::new(
        "[[security.whitelist]]\ncommands = [[1000, 1099]]\n\
         [[security.whitelist]]\ncommands = [1500]\nroles = [\"moderator\"]\n\
         [[security.whitelist]]\ncommands = [[1200, 1299]]\nstates = [\"in-group\"]",
    );
    h.links_up();
    let (player, moderator) = (h.connect(Codec::Protobuf), h.connect(Codec::Text));
    h.login(player, "alice");
    h.login_with(moderator, token_with_role("mod", "moderator"));
    // Any role: 1000–1099.
    assert_eq!(h.business(player, 1000, 2), Ok(()));
    assert_eq!(h.business(moderator, 1099, 2), Ok(()));
    // Moderators only: 1500.
    assert_eq!(h.business(player, 1500, 3), Err(ErrorCode::CommandNotAllowed));
    assert_eq!(h.business(moderator, 1500, 3), Ok(()));
    // Not listed at all.
    assert_eq!(h.business(moderator, 1700, 4), Err(ErrorCode::CommandNotAllowed));
    // In a group only.
    assert_eq!(h.business(player, 1200, 5), Err(ErrorCode::CommandNotAllowed));
    h.send_msg(player, cmd::JOIN_GROUP, 6, &GroupRequest { group: "room".into() });
    assert_eq!(h.take(player)[0].cmd, cmd::JOIN_GROUP);
    assert_eq!(h.business(player, 1200, 7), Ok(()));
    assert!(!h.closed.contains(&player), "a refused command is not a bad frame");
    assert_eq!(h.cores[0].stats().drop_not_allowed, 3);
    // A live reload changes the rules, and a session's role stays.
    let c = config("[[security.whitelist]]\ncommands = [1700]\nroles = [\"moderator\"]");
    c.validate().unwrap();
    h.cores[0].apply_config(&c);
    assert_eq!(h.business(moderator, 1700, 8), Ok(()));
    assert_eq!(h.business(player, 1000, 9), Err(ErrorCode::CommandNotAllowed));
}

#[test]
fn the_default_role_names_sessions_without_one_and_the_delegate_answer_gives_roles() {
    let mut h = Harness::new(
        "[security]\ndefault_role = \"guest\"\n\
         [[security.whitelist]]\ncommands = [1000]\nroles = [\"guest\"]\n\
         [[security.whitelist]]\ncommands = [1001]\nroles = [\"player\"]",
    );
    h.links_up();
    let (guest, player) = (h.connect(Codec::Protobuf), h.connect(Codec::Protobuf));
    h.login(guest, "g");
    h.login_with(player, token_with_role("p", "player"));
    assert_eq!(h.business(guest, 1000, 2), Ok(()));
    assert_eq!(h.business(guest, 1001, 3), Err(ErrorCode::CommandNotAllowed));
    assert_eq!(h.business(player, 1001, 4), Ok(()));
    assert_eq!(h.business(player, 1000, 5), Err(ErrorCode::CommandNotAllowed));
}

#[test]
fn a_source_sending_garbage_climbs_to_a_block_that_expires() {
    let mut h = Harness::new(&format!("max_bad_frames = 100\n{BEHAVIOUR}"));
    let blocks = h.record_blocks();
    let attacker = [198, 51, 100, 7];
    let c = h.connect_from(0, Codec::Protobuf, attacker);
    // 5 points per bad frame: throttle at 4, kick at 8.
    for _ in 0..4 {
        h.raw(c, &[0, 0, 0, 2, 0xff, 0xff]);
    }
    assert_eq!(h.cores[0].stats().escalated_throttles, 1);
    // Throttled: its business frames are refused (it is not logged in, so
    // compliance answers first); its heartbeats still pass.
    h.take(c);
    h.send(c, &Envelope::new(cmd::HEARTBEAT, 1, 0, b""));
    assert_eq!(h.take(c)[0].cmd, cmd::HEARTBEAT);
    for _ in 0..4 {
        h.raw(c, &[0, 0, 0, 2, 0xff, 0xff]);
    }
    assert!(h.closed.contains(&c), "past kick: kicked");
    assert_eq!(h.cores[0].stats().escalated_kicks, 1);
    // On probation: a new connection that sends anything but LOGIN or
    // RESUME first is closed BLOCKED…
    let again = h.connect_from(0, Codec::Protobuf, attacker);
    assert!(!h.closed.contains(&again));
    h.send(again, &Envelope::new(cmd::HEARTBEAT, 1, 0, b""));
    assert!(h.closed.contains(&again));
    assert!(h.expect_error(again, ErrorCode::Blocked).message.contains("blocked"));
    // …and it is not blocked at the NIC yet.
    assert!(blocks.lock().unwrap().is_empty());
    // Others are not affected.
    let player = h.connect_from(0, Codec::Protobuf, [203, 0, 113, 9]);
    h.login(player, "alice");
    // Coming back again and again while on probation: 1 point each, past
    // block.
    for i in 0..19 {
        let c = h.connect_from(0, Codec::Protobuf, attacker);
        h.send(c, &Envelope::new(cmd::ACK, i, 0, b""));
        assert!(h.closed.contains(&c));
    }
    let ip: IpAddr = attacker.into();
    assert_eq!(*blocks.lock().unwrap(), vec![(ip, Duration::from_secs(30))]);
    assert_eq!(h.cores[0].stats().escalated_blocks, 1);
    let events = h.cores[0].shared().events().after(0, 100);
    assert!(events.iter().any(|e| e.kind == crate::admin::EventKind::FilterBlock && e.address == ip.to_string()));
    assert!(!h.closed.contains(&player));
    // Blocked on every worker until the block expires.
    h.advance(Duration::from_secs(29));
    assert!(h.cores[0].shared().is_blocked(ip, h.now));
    h.advance(Duration::from_secs(60));
    assert!(!h.cores[0].shared().is_blocked(ip, h.now));
    let later = h.connect_from(0, Codec::Protobuf, attacker);
    assert!(!h.closed.contains(&later), "the block expired and the score decayed");
}

#[test]
fn failed_logins_climb_to_a_block_and_an_allowlisted_source_never_does() {
    let mut h = Harness::new(&format!("max_bad_frames = 100\n[security]\nallowlist = [\"10.1.0.0/16\"]\n{BEHAVIOUR}"));
    let blocks = h.record_blocks();
    for (ip, blocked) in [([198, 51, 100, 8], true), ([10, 1, 2, 3], false)] {
        let mut refused = 0;
        // 10 points per failed login: kicked at 40 (a LOGIN still passes
        // probation), blocked at 60; then connections are refused.
        for i in 0..40 {
            let c = h.connect_from(0, Codec::Protobuf, ip);
            if h.closed.contains(&c) {
                refused += 1;
                continue;
            }
            h.send_msg(c, cmd::LOGIN, i, &LoginRequest { token: "forged.token".into(), ..Default::default() });
            h.take(c);
        }
        let ip: IpAddr = ip.into();
        assert_eq!(blocks.lock().unwrap().iter().any(|(b, _)| *b == ip), blocked, "{ip}");
        assert_eq!(refused > 0, blocked, "{ip}: {refused} connections refused");
    }
    assert_eq!(h.cores[0].stats().drop_auth_failed, 6 + 40);
}

#[test]
fn a_logged_in_flooder_is_scored_as_a_user_and_players_behind_its_address_keep_playing() {
    let mut h = Harness::new(&format!("[limits]\nsession_rate = 10\nsession_burst = 10\n{BEHAVIOUR}"));
    let blocks = h.record_blocks();
    h.links_up();
    let nat = [100, 64, 0, 1];
    let (cheater, player) = (h.connect_from(0, Codec::Protobuf, nat), h.connect_from(0, Codec::Protobuf, nat));
    h.login(cheater, "cheater");
    h.login(player, "alice");
    // Flooding commands: refusals, 1 point each, on top of the login's 5.
    let mut seq = 10;
    while !h.closed.contains(&cheater) && seq < 200 {
        let _ = h.business(cheater, 1000, seq);
        seq += 1;
    }
    assert!(h.closed.contains(&cheater), "kicked past 40 points");
    assert_eq!(h.cores[0].stats().escalated_kicks, 1);
    assert!(blocks.lock().unwrap().is_empty(), "a kick, not a block");
    // The player behind the same address plays on.
    assert!(!h.closed.contains(&player));
    assert_eq!(h.business(player, 1000, 500), Ok(()));
}

#[test]
fn strangers_garbage_from_a_nat_with_players_kicks_the_strangers_and_blocks_nobody() {
    let mut h = Harness::new(&format!("max_bad_frames = 100\n{BEHAVIOUR}"));
    let blocks = h.record_blocks();
    h.links_up();
    let nat = [100, 64, 0, 2];
    let player = h.connect_from(0, Codec::Protobuf, nat);
    h.login(player, "alice");
    // Strangers behind the NAT send garbage: 5 points per bad frame to
    // `kick` (40), then 1 per stranger closed on probation, past `block`.
    let mut strangers = Vec::new();
    for _ in 0..30 {
        let c = h.connect_from(0, Codec::Protobuf, nat);
        for _ in 0..5 {
            h.raw(c, &[0, 0, 0, 2, 0xff, 0xff]);
        }
        strangers.push(c);
    }
    assert!(strangers.iter().all(|c| h.closed.contains(c)), "the strangers are kicked");
    let score = h.cores[0].scores.of_ip(nat.into(), h.now, 1.0);
    assert!(score >= 60.0, "past block: {score}");
    assert!(blocks.lock().unwrap().is_empty(), "an address with players is never blocked");
    assert_eq!(h.cores[0].stats().escalated_blocks, 0);
    assert!(!h.cores[0].shared().is_blocked(nat.into(), h.now));
    // The player plays on, and another logs in from the same address.
    assert_eq!(h.business(player, 1000, 1), Ok(()));
    let late = h.connect_from(0, Codec::Protobuf, nat);
    h.login(late, "bob");
    assert_eq!(h.business(late, 1000, 2), Ok(()));
    // Once its players are gone, more garbage blocks the address.
    h.send(player, &Envelope::new(cmd::LOGOUT, 3, 0, b""));
    h.send(late, &Envelope::new(cmd::LOGOUT, 4, 0, b""));
    for _ in 0..5 {
        let c = h.connect_from(0, Codec::Protobuf, nat);
        h.raw(c, &[0, 0, 0, 2, 0xff, 0xff]);
    }
    let ip: IpAddr = nat.into();
    assert_eq!(blocks.lock().unwrap().first().map(|b| b.0), Some(ip));
}

#[test]
fn login_churn_of_one_user_is_throttled() {
    let mut h = Harness::new(BEHAVIOUR);
    h.links_up();
    // 5 points a login: the fourth pushes the user to 20 (throttle).
    let mut last = None;
    for i in 0..4 {
        let c = h.connect_from(0, Codec::Protobuf, [203, 0, 113, 10 + i]);
        h.login(c, "churner");
        last = Some(c);
    }
    let c = last.unwrap();
    h.links_up();
    assert_eq!(h.business(c, 1000, 2), Err(ErrorCode::Throttled));
    assert_eq!(h.cores[0].stats().drop_suspicious, 1);
    // It decays: 1 point a second.
    h.advance(Duration::from_secs(2));
    h.send(c, &Envelope::new(cmd::HEARTBEAT, 3, 0, b""));
    h.take(c);
    assert_eq!(h.business(c, 1000, 4), Ok(()));
}

#[test]
fn a_listener_runs_only_the_links_configured_for_it() {
    // The JSON listener (7002) runs compliance only: no class rate, no
    // whitelist.
    let mut h = Harness::new(
        "[security]\nchain = [\"rate\", \"whitelist\"]\n\
         [[security.listeners]]\nbind = \"127.0.0.1:7002\"\nchain = [\"compliance\"]\n\
         [[security.whitelist]]\ncommands = [1000]\n\
         [[security.classes]]\nname = \"one\"\ncommands = [1000]\nrate = 1\nburst = 1",
    );
    h.links_up();
    let (binary, json) = (h.connect(Codec::Protobuf), h.connect(Codec::Json));
    h.login(binary, "alice");
    h.login(json, "bob");
    assert_eq!(h.business(binary, 1000, 2), Ok(()));
    assert_eq!(h.business(binary, 1000, 3), Err(ErrorCode::Throttled));
    assert_eq!(h.business(binary, 1001, 4), Err(ErrorCode::CommandNotAllowed));
    for seq in 2..6 {
        assert_eq!(h.business(json, 1000 + seq % 2, seq), Ok(()));
    }
}

#[test]
fn bad_security_config_is_refused_naming_the_key() {
    let parse = |extra: &str| {
        let text = format!(
            "{extra}\n[[listeners]]\nbind = \"127.0.0.1:7000\"\n[auth]\nkind = \"token\"\nsecret = \"{SECRET}\"\n"
        );
        Config::parse(&text, "test").map(|_| ()).map_err(|e| e.to_string())
    };
    assert!(parse("").is_ok());
    for (extra, key) in [
        ("[security]\nallowlist = [\"10.0.0.0/33\"]", "security.allowlist[0]"),
        ("[security]\nchain = [\"firewall\"]", "unknown variant"),
        ("[[security.listeners]]\nbind = \"127.0.0.1:9999\"\nchain = []", "security.listeners[0].bind"),
        ("[security.behaviour]\nthrottle = 50\nkick = 10", "security.behaviour"),
        ("[[security.classes]]\nname = \"x\"\ncommands = [5]\nrate = 1\nburst = 1", "security.classes[0].commands"),
        ("[[security.whitelist]]\ncommands = [[2000, 1000]]", "security.whitelist[0].commands"),
        ("[[security.feeds]]\nname = \"drop\"\npath = \"/x\"", "security.feeds"),
    ] {
        let e = parse(extra).unwrap_err();
        assert!(e.contains(key), "{extra}: {e}");
    }
}
