//! The rules of `proto/PROTOCOL.md` that need a running gateway, checked
//! over raw connections the way a third-party client would speak: the
//! document's transcripts run as written, the frame limit, sequencing,
//! acknowledgement, bad frames, deadlines, rotating resume tokens and the
//! limits a client meets.

use std::time::Duration;

use portcullis_proto::pb::client::{
    Error as ErrorMsg, ErrorCode, GroupRequest, Kick, LoginRequest, ResumeReply, SendResult, SendToGroup, SendToUser,
    SendToUsers,
};
use portcullis_proto::token::{sign, Claims};
use portcullis_proto::{cmd, flags, Codec, Envelope};
use portcullis_sample_game_server::{COUNTER_ADD, COUNTER_GET, ECHO, STREAM, STREAM_ITEM};
use portcullis_tests::{token, token_for, Raw, Stack, StackOptions};

const DOC: &str = include_str!("../../proto/PROTOCOL.md");

/// The body of the fenced block after `<!-- doc-test: NAME -->` in
/// PROTOCOL.md.
fn block(name: &str) -> &'static str {
    let marker = format!("<!-- doc-test: {name} -->");
    let at = DOC.find(&marker).unwrap_or_else(|| panic!("PROTOCOL.md has no {marker}"));
    let rest = &DOC[at + marker.len()..];
    let rest = &rest[rest.find("```").unwrap_or_else(|| panic!("no fenced block after {marker}"))..];
    let body = &rest[rest.find('\n').expect("a line after the fence") + 1..];
    &body[..body.find("\n```").unwrap_or_else(|| panic!("the block after {marker} is not closed"))]
}

/// Whether `text` matches `pattern`, where each `…` stands for any run of
/// characters.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('…').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if parts.len() == 1 {
        return pattern == text;
    }
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    for middle in &parts[1..parts.len() - 1] {
        let Some(i) = rest.find(middle) else { return false };
        rest = &rest[i + middle.len()..];
    }
    rest.ends_with(last)
}

/// Runs a transcript of PROTOCOL.md §12 on a listener of `codec`.
async fn run_transcript(stack: &Stack, codec: Codec, name: &str) {
    let token = token_for("alice", "ios");
    let mut raw = Raw::connect(stack, codec).await;
    for line in block(name).lines() {
        if let Some(sent) = line.strip_prefix("> ") {
            raw.send_bytes(format!("{}\n", sent.replace("<token>", &token)).as_bytes()).await;
        } else if line == "< (connection closed)" {
            if let Some(got) = raw.recv_line().await {
                panic!("{name}: expected the connection to close, got {got:?}");
            }
        } else if let Some(expected) = line.strip_prefix("< ") {
            let got = raw.recv_line().await.unwrap_or_else(|| panic!("{name}: closed before {expected:?}"));
            assert!(glob(expected.trim_end(), got.trim_end()), "{name}:\nexpected {expected:?}\n     got {got:?}");
        } else {
            panic!("{name}: a transcript line starts with `> ` or `< `: {line:?}");
        }
    }
}

// ----- the document's examples -----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_text_transcripts_of_the_document_run_against_a_gateway() {
    let stack = Stack::start("").await;
    run_transcript(&stack, Codec::Text, "transcript-text-anonymous").await;
    run_transcript(&stack, Codec::Text, "transcript-text-session").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_transcripts_of_the_document_run_against_a_gateway() {
    let stack = Stack::start("").await;
    run_transcript(&stack, Codec::Json, "transcript-json-session").await;
    run_transcript(&stack, Codec::Json, "transcript-json-errors").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worked_example_token_logs_in_on_a_gateway_with_the_documented_secret() {
    let secret = block("token-secret");
    let auth = format!("kind = \"token\"\nsecret = \"{secret}\"");
    let stack = Stack::start_with(StackOptions { auth: Some(auth), ..Default::default() }).await;
    let mut raw = Raw::connect(&stack, Codec::Text).await;
    let reply = raw.login_with(block("token")).await;
    assert_eq!((reply.user_id.as_str(), reply.device.as_str()), ("alice", "ios"));
    // Padded, and expired by the gateway's clock: refused.
    let mut raw = Raw::connect(&stack, Codec::Text).await;
    let (body, mac) = block("token").split_once('.').unwrap();
    raw.request(cmd::LOGIN, 1, &LoginRequest { token: format!("{body}.{mac}="), ..Default::default() }).await;
    raw.expect_error(ErrorCode::AuthFailed).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let expired =
        sign(secret.as_bytes(), &Claims { uid: "alice".into(), dev: "ios".into(), exp: now, role: String::new() });
    raw.request(cmd::LOGIN, 2, &LoginRequest { token: expired, ..Default::default() }).await;
    let (env, e) = raw.expect_error(ErrorCode::AuthFailed).await;
    assert_eq!((env.seq, e.cmd), (2, cmd::LOGIN));
    assert!(e.message.contains("token expired at"), "{e:?}");
}

// ----- the frame limit (§3.3) ---------------------------------------------------------

const MAX_FRAME: usize = 1024;

/// A frame whose encoded envelope is exactly `len` bytes: `cmd` with a
/// payload padded to fit, for a length-prefixed codec.
fn binary_frame_of(codec: Codec, command: u32, seq: u32, len: usize) -> Vec<u8> {
    for n in 0..len {
        let payload = vec![b'x'; n];
        let mut out = Vec::new();
        codec.encode(&Envelope::new(command, seq, 0, &payload), &mut out);
        if out.len() - 4 == len {
            return out;
        }
    }
    panic!("no {codec} frame of exactly {len} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_of_exactly_the_limit_passes_and_one_byte_more_closes() {
    let stack = Stack::start(&format!("max_frame_bytes = {MAX_FRAME}")).await;
    // Binary: the limit counts the envelope, not the 4-byte prefix.
    let mut raw = Raw::connect(&stack, Codec::Protobuf).await;
    raw.send_bytes(&binary_frame_of(Codec::Protobuf, cmd::HEARTBEAT, 1, MAX_FRAME)).await;
    assert_eq!(raw.recv().await.unwrap().cmd, cmd::HEARTBEAT);
    raw.send_bytes(&binary_frame_of(Codec::Protobuf, cmd::HEARTBEAT, 2, MAX_FRAME + 1)).await;
    let (env, e) = raw.expect_error(ErrorCode::FrameTooLarge).await;
    assert_eq!(env.seq, 0);
    assert!(e.message.contains(&format!("{}", MAX_FRAME + 1)) && e.message.contains(&MAX_FRAME.to_string()));
    raw.expect_eof().await;
    // Lines: the limit counts the line, not its `\n` or `\r\n`.
    let lines: [(Codec, &str, &str); 2] =
        [(Codec::Json, r#"{"cmd":1,"seq":1,"payload":""#, "\"}"), (Codec::Text, "HEARTBEAT 1 0 - ", "")];
    for (codec, head, tail) in lines {
        for end in ["\n", "\r\n"] {
            let mut raw = Raw::connect(&stack, codec).await;
            let pad = "x".repeat(MAX_FRAME - head.len() - tail.len());
            let line = format!("{head}{pad}{tail}");
            assert_eq!(line.len(), MAX_FRAME);
            raw.send_bytes(format!("{line}{end}").as_bytes()).await;
            assert_eq!(raw.recv().await.unwrap().cmd, cmd::HEARTBEAT, "{codec} {end:?}");
            raw.send_bytes(format!("{head}x{pad}{tail}{end}").as_bytes()).await;
            raw.expect_error(ErrorCode::FrameTooLarge).await;
            raw.expect_eof().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_of_exactly_the_limit_may_arrive_with_its_crlf_split() {
    let stack = Stack::start(&format!("max_frame_bytes = {MAX_FRAME}")).await;
    let mut raw = Raw::connect(&stack, Codec::Text).await;
    let head = "HEARTBEAT 1 0 - ";
    let line = format!("{head}{}", "x".repeat(MAX_FRAME - head.len()));
    raw.send_bytes(format!("{line}\r").as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    raw.send_bytes(b"\n").await;
    let env = raw.recv().await.expect("an answer, not a close");
    assert_eq!(env.cmd, cmd::HEARTBEAT, "{env:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_the_limit_becomes_frame_too_large_and_the_connection_stays() {
    let stack = Stack::start(&format!("max_frame_bytes = {MAX_FRAME}")).await;
    let mut raw = Raw::connect(&stack, Codec::Protobuf).await;
    raw.login("big").await;
    // The request fits exactly; its echo carries flags and server_seq too.
    raw.send_bytes(&binary_frame_of(Codec::Protobuf, ECHO, 7, MAX_FRAME)).await;
    let (env, e) = raw.expect_error(ErrorCode::FrameTooLarge).await;
    assert_eq!((env.seq, env.server_seq, e.cmd), (7, 0, ECHO), "{e:?}");
    raw.heartbeat(8).await;
    raw.send(&Envelope::new(ECHO, 9, 0, b"small")).await;
    let env = raw.recv().await.unwrap();
    assert_eq!((env.seq, env.server_seq, &*env.payload), (9, 1, &b"small"[..]), "no number was used up");
}

// ----- sequencing and acknowledgement (§5) -------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_answers_and_gateway_refusals_are_unsequenced_after_login() {
    let stack = Stack::start("").await;
    let mut raw = Raw::connect(&stack, Codec::Protobuf).await;
    raw.login("seq").await;
    raw.heartbeat(2).await;
    raw.send(&Envelope::new(77, 3, 0, b"")).await;
    let (env, _) = raw.expect_error(ErrorCode::UnknownCommand).await;
    assert_eq!((env.seq, env.server_seq), (3, 0));
    raw.send(&Envelope::new(cmd::JOIN_GROUP, 4, 0, &[0x0a, 0x09])).await;
    let (env, _) = raw.expect_error(ErrorCode::BadPayload).await;
    assert_eq!((env.seq, env.server_seq), (4, 0));
    raw.send(&Envelope::new(5000, 5, 0, b"")).await;
    assert_eq!(raw.expect_error(ErrorCode::UnknownCommand).await.0.server_seq, 0);
    // The first sequenced frame is still number 1.
    raw.send(&Envelope::new(ECHO, 6, 0, b"one")).await;
    let env = raw.recv().await.unwrap();
    assert_eq!((env.seq, env.flags, env.server_seq), (6, flags::RESPONSE, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_refusals_never_fill_the_replay_buffer_or_close_a_player() {
    let stack =
        Stack::start("[sessions]\nreplay_max_messages = 4\n[limits]\nsession_rate = 1\nsession_burst = 2").await;
    let mut raw = Raw::connect(&stack, Codec::Protobuf).await;
    raw.login("hasty").await;
    for seq in 10..40 {
        raw.send(&Envelope::new(ECHO, seq, 0, b"x")).await;
    }
    let (mut echoed, mut throttled) = (0, 0);
    for _ in 10..40 {
        let env = raw.recv().await.expect("one answer per request, no close");
        match env.cmd {
            ECHO => echoed += 1,
            cmd::ERROR => {
                let e: ErrorMsg = raw.decode(&env);
                assert_eq!((e.code, env.server_seq), (ErrorCode::Throttled as i32, 0), "{e:?}");
                throttled += 1;
            }
            other => panic!("unexpected {other}: {env:?}"),
        }
    }
    assert!(echoed <= 3 && throttled >= 27, "{echoed} echoed, {throttled} throttled");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    raw.heartbeat(50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_acks_is_kicked_when_its_replay_buffer_is_full() {
    let stack = Stack::start("[sessions]\nreplay_max_messages = 8").await;
    let mut careless = Raw::connect(&stack, Codec::Protobuf).await;
    let login = careless.login("careless").await;
    for seq in 1..=8u32 {
        careless.send(&Envelope::new(ECHO, seq, 0, b"x")).await;
        assert_eq!(careless.recv().await.unwrap().server_seq, u64::from(seq));
    }
    careless.send(&Envelope::new(ECHO, 9, 0, b"x")).await;
    let kick = careless.recv().await.expect("a KICK");
    assert_eq!((kick.cmd, kick.flags, kick.seq, kick.server_seq), (cmd::KICK, flags::PUSH, 0, 0));
    let k: Kick = careless.decode(&kick);
    assert!(k.reason.contains("replay buffer overflow") && !k.reconnect, "{k:?}");
    careless.expect_eof().await;
    // The session ended: no RESUME.
    let mut again = Raw::connect(&stack, Codec::Protobuf).await;
    assert_eq!(again.resume(1, &login.resume_token).await.cmd, cmd::ERROR);
    // A client that acks (piggy-backed) is never kicked.
    let mut careful = Raw::connect(&stack, Codec::Protobuf).await;
    careful.login("careful").await;
    let mut last = 0;
    for seq in 1..=40u32 {
        careful.send(&Envelope { ack: last, ..Envelope::new(ECHO, seq, 0, b"x") }).await;
        last = careful.recv().await.unwrap().server_seq;
        assert_eq!(last, u64::from(seq));
    }
}

// ----- bad frames (§9) -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_login_counts_as_a_bad_frame_and_the_eighth_closes() {
    let stack = Stack::start("").await;
    let mut raw = Raw::connect(&stack, Codec::Text).await;
    for seq in 1..=8 {
        raw.request(cmd::LOGIN, seq, &LoginRequest { token: format!("guess-{seq}"), ..Default::default() }).await;
        let (env, _) = raw.expect_error(ErrorCode::AuthFailed).await;
        assert_eq!(env.seq, seq);
    }
    raw.expect_eof().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_before_login_counts_and_the_count_restarts_at_login() {
    let stack = Stack::start("").await;
    let mut raw = Raw::connect(&stack, Codec::Protobuf).await;
    // Seven refusals of four kinds before login…
    raw.send(&Envelope::new(ECHO, 1, 0, b"")).await;
    raw.expect_error(ErrorCode::NotLoggedIn).await;
    raw.send(&Envelope::new(cmd::JOIN_GROUP, 2, 0, b"")).await;
    raw.expect_error(ErrorCode::NotLoggedIn).await;
    raw.send_bytes(&[0, 0, 0, 1, 0xff]).await;
    raw.expect_error(ErrorCode::BadFrame).await;
    for seq in 3..5 {
        assert_eq!(raw.resume(seq, "no-such-token").await.cmd, cmd::ERROR);
    }
    raw.request(cmd::LOGIN, 5, &LoginRequest { token: "nope".into(), ..Default::default() }).await;
    raw.expect_error(ErrorCode::AuthFailed).await;
    raw.send(&Envelope::new(cmd::SEND_TO_USER, 6, 0, b"")).await;
    raw.expect_error(ErrorCode::NotLoggedIn).await;
    // …then a login: the connection is a player now and starts from zero.
    raw.login_with(&token("reformed")).await;
    for _ in 0..7 {
        raw.send_bytes(&[0, 0, 0, 1, 0xff]).await;
        raw.expect_error(ErrorCode::BadFrame).await;
    }
    raw.heartbeat(9).await;
    raw.send_bytes(&[0, 0, 0, 1, 0xff]).await;
    raw.expect_error(ErrorCode::BadFrame).await;
    raw.expect_eof().await;

    // Eight refusals before login close a stranger.
    let mut stranger = Raw::connect(&stack, Codec::Protobuf).await;
    for seq in 1..=8 {
        stranger.send(&Envelope::new(ECHO, seq, 0, b"")).await;
        stranger.expect_error(ErrorCode::NotLoggedIn).await;
    }
    stranger.expect_eof().await;
}

// ----- deadlines (§6) ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_does_not_log_in_in_time_gets_login_timeout() {
    let stack = Stack::start("login_timeout_ms = 400").await;
    let mut raw = Raw::connect(&stack, Codec::Text).await;
    let started = std::time::Instant::now();
    // Heartbeats do not keep a stranger in.
    let mut seq = 1;
    let error = loop {
        raw.send(&Envelope::new(cmd::HEARTBEAT, seq, 0, b"")).await;
        let env = raw.recv().await.expect("an answer or the LOGIN_TIMEOUT before the close");
        if env.cmd == cmd::ERROR {
            break env;
        }
        assert_eq!(env.cmd, cmd::HEARTBEAT);
        assert!(started.elapsed() < Duration::from_secs(3), "no LOGIN_TIMEOUT after 3 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
        seq += 1;
    };
    let e: ErrorMsg = raw.decode(&error);
    assert_eq!((e.code, error.seq, e.cmd, error.server_seq), (17, 0, 0, 0), "{e:?}");
    assert_eq!(ErrorCode::try_from(e.code), Ok(ErrorCode::LoginTimeout));
    raw.expect_eof().await;
    // Logging in in time is fine.
    let mut player = Raw::connect(&stack, Codec::Text).await;
    player.login("punctual").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    player.heartbeat(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_gets_heartbeat_timeout_and_its_session_waits_for_resume() {
    let stack = Stack::start("heartbeat_timeout_ms = 400").await;
    let mut raw = Raw::connect(&stack, Codec::Json).await;
    let login = raw.login("sleepy").await;
    assert_eq!(login.heartbeat_interval_ms, 133, "a third of the timeout");
    let (env, e) = raw.expect_error(ErrorCode::HeartbeatTimeout).await;
    assert_eq!((env.seq, env.server_seq, e.cmd), (0, 0, 0), "{e:?}");
    raw.expect_eof().await;
    let mut back = Raw::connect(&stack, Codec::Json).await;
    let env = back.resume(1, &login.resume_token).await;
    assert_eq!(env.cmd, cmd::RESUME, "{env:?}");
    let reply: ResumeReply = back.decode(&env);
    assert_eq!(reply.session_id, login.session_id);
}

// ----- RESUME (§7.3) -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_tokens_work_once_and_each_resume_returns_the_next() {
    let stack = Stack::start("").await;
    let mut first = Raw::connect(&stack, Codec::Json).await;
    let login = first.login("roamer").await;
    first.send(&Envelope::new(ECHO, 2, 0, b"kept")).await;
    assert_eq!(first.recv().await.unwrap().server_seq, 1);
    drop(first);

    // Another codec is refused, and does not spend the token.
    let mut text = Raw::connect(&stack, Codec::Text).await;
    let env = text.resume(1, &login.resume_token).await;
    let e: ErrorMsg = text.decode(&env);
    assert_eq!(e.code, ErrorCode::ResumeFailed as i32);
    assert!(e.message.contains("json listener"), "{e:?}");

    let mut second = Raw::connect(&stack, Codec::Json).await;
    let env = second.resume(1, &login.resume_token).await;
    assert_eq!((env.cmd, env.seq, env.server_seq), (cmd::RESUME, 1, 0), "{env:?}");
    let reply: ResumeReply = second.decode(&env);
    assert_eq!((reply.session_id, reply.replayed), (login.session_id, 1));
    assert!(!reply.resume_token.is_empty() && reply.resume_token != login.resume_token, "a fresh token");
    let replayed = second.recv().await.unwrap();
    assert_eq!((replayed.server_seq, &*replayed.payload), (1, &b"kept"[..]), "the same frame again");
    drop(second);

    let mut third = Raw::connect(&stack, Codec::Json).await;
    let env = third.resume(1, &login.resume_token).await;
    let e: ErrorMsg = third.decode(&env);
    assert_eq!(e.code, ErrorCode::ResumeFailed as i32);
    assert!(e.message.contains("already used or superseded"), "{e:?}");
    // The connection stays open; the latest token works.
    let env = third.resume(2, &reply.resume_token).await;
    assert_eq!(env.cmd, cmd::RESUME, "{env:?}");
    let next: ResumeReply = third.decode(&env);
    assert_eq!(next.session_id, login.session_id);
    assert_ne!(next.resume_token, reply.resume_token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_too_large_and_logout_end_the_session_for_good() {
    let stack = Stack::start(&format!("max_frame_bytes = {MAX_FRAME}")).await;
    let mut raw = Raw::connect(&stack, Codec::Json).await;
    let login = raw.login("oversize").await;
    raw.send_bytes(format!("{}\n", "x".repeat(2 * MAX_FRAME)).as_bytes()).await;
    raw.expect_error(ErrorCode::FrameTooLarge).await;
    raw.expect_eof().await;
    let mut back = Raw::connect(&stack, Codec::Json).await;
    let env = back.resume(1, &login.resume_token).await;
    assert_eq!(back.decode::<ErrorMsg>(&env).code, ErrorCode::ResumeFailed as i32);

    let mut raw = Raw::connect(&stack, Codec::Json).await;
    let login = raw.login("leaver").await;
    raw.send(&Envelope::new(cmd::LOGOUT, 2, 0, b"")).await;
    let env = raw.recv().await.unwrap();
    assert_eq!((env.cmd, env.seq, env.flags, env.server_seq), (cmd::LOGOUT, 2, flags::RESPONSE, 0));
    raw.expect_eof().await;
    let mut back = Raw::connect(&stack, Codec::Json).await;
    let env = back.resume(1, &login.resume_token).await;
    assert_eq!(back.decode::<ErrorMsg>(&env).code, ErrorCode::ResumeFailed as i32);
}

// ----- limits (§10) ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_beyond_the_prelogin_limit_of_an_address_are_refused() {
    let stack = Stack::start("[limits]\nmax_prelogin_per_ip = 3").await;
    let mut strangers = Vec::new();
    for _ in 0..3 {
        let mut raw = Raw::connect(&stack, Codec::Text).await;
        raw.heartbeat(1).await;
        strangers.push(raw);
    }
    let mut fourth = Raw::connect(&stack, Codec::Text).await;
    let (env, e) = fourth.expect_error(ErrorCode::Throttled).await;
    assert_eq!(env.seq, 0);
    assert!(e.message.contains("have not logged in"), "{e:?}");
    fourth.expect_eof().await;
    // A stranger who logs in makes room.
    strangers[0].login("now-a-player").await;
    let mut fifth = Raw::connect(&stack, Codec::Text).await;
    fifth.heartbeat(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_address_rate_binds_strangers_only_and_never_a_first_login() {
    let stack = Stack::start("[limits]\nip_rate = 1\nip_burst = 3").await;
    let mut stranger = Raw::connect(&stack, Codec::Protobuf).await;
    for seq in 1..=5 {
        stranger.send(&Envelope::new(cmd::HEARTBEAT, seq, 0, b"")).await;
    }
    let throttled = {
        let mut n = 0;
        for _ in 1..=5 {
            if stranger.recv().await.unwrap().cmd == cmd::ERROR {
                n += 1;
            }
        }
        n
    };
    assert!(throttled >= 2, "the address's bucket is empty: {throttled} throttled");
    // A player behind the same address: its LOGIN is not charged, and
    // after it only the session's and user's buckets count.
    let mut player = Raw::connect(&stack, Codec::Protobuf).await;
    player.login("behind-nat").await;
    for seq in 2..30 {
        player.heartbeat(seq).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_sessions_of_a_user_share_the_user_rate() {
    let stack = Stack::start("[limits]\nuser_rate = 1\nuser_burst = 4").await;
    let mut phone = Raw::connect(&stack, Codec::Protobuf).await;
    phone.login_with(&token_for("twin", "ios")).await;
    let mut desktop = Raw::connect(&stack, Codec::Protobuf).await;
    desktop.login_with(&token_for("twin", "pc")).await;
    let mut throttled = 0;
    for seq in 2..5 {
        for raw in [&mut phone, &mut desktop] {
            raw.send(&Envelope::new(cmd::HEARTBEAT, seq, 0, b"")).await;
            let env = raw.recv().await.expect("an answer, no close");
            if env.cmd == cmd::ERROR {
                assert_eq!(raw.decode::<ErrorMsg>(&env).code, ErrorCode::Throttled as i32);
                throttled += 1;
            }
        }
    }
    assert!(throttled >= 1, "6 frames against one user bucket of 4");
    // Another user is not affected.
    let mut other = Raw::connect(&stack, Codec::Protobuf).await;
    other.login("other").await;
    for seq in 2..6 {
        other.heartbeat(seq).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_are_protected_and_fan_out_is_bounded() {
    let stack = Stack::start("[limits]\npeer_inbound_rate = 1\npeer_inbound_burst = 2\nmax_recipients = 2").await;
    let mut bob = Raw::connect(&stack, Codec::Json).await;
    bob.login("bob").await;
    bob.request(cmd::JOIN_GROUP, 2, &GroupRequest { group: "den".into() }).await;
    assert_eq!(bob.recv().await.unwrap().cmd, cmd::JOIN_GROUP);
    let mut alice = Raw::connect(&stack, Codec::Json).await;
    alice.login("alice").await;
    let mut delivered = Vec::new();
    for seq in 10..15 {
        alice.request(cmd::SEND_TO_USER, seq, &SendToUser { user_id: "bob".into(), payload: b"hi".to_vec() }).await;
        let env = alice.recv().await.unwrap();
        assert_eq!((env.cmd, env.seq), (cmd::SEND_TO_USER, seq));
        delivered.push(alice.decode::<SendResult>(&env).delivered);
    }
    assert_eq!(delivered, [1, 1, 0, 0, 0], "bob takes a burst of 2 at 1/s");
    // Group messages are held back only by bob's replay buffer.
    for seq in 20..25 {
        let msg = SendToGroup { group: "den".into(), payload: b"all".to_vec(), include_self: false };
        alice.request(cmd::SEND_TO_GROUP, seq, &msg).await;
        let env = alice.recv().await.unwrap();
        assert_eq!(alice.decode::<SendResult>(&env).delivered, 1);
    }
    // At most `max_recipients` user ids per SEND_TO_USERS.
    let three = SendToUsers { user_ids: vec!["a".into(), "b".into(), "c".into()], payload: b"x".to_vec() };
    alice.request(cmd::SEND_TO_USERS, 30, &three).await;
    let (env, _) = alice.expect_error(ErrorCode::BadPayload).await;
    assert_eq!(env.seq, 30);
    let two = SendToUsers { user_ids: vec!["a".into(), "b".into()], payload: b"x".to_vec() };
    alice.request(cmd::SEND_TO_USERS, 31, &two).await;
    let env = alice.recv().await.unwrap();
    assert_eq!(alice.decode::<SendResult>(&env).delivered, 0);
}

// ----- the sample game (§11) -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_game_commands_answer_as_documented() {
    let stack = Stack::start("").await;
    let mut raw = Raw::connect(&stack, Codec::Text).await;
    raw.login("gamer").await;
    for (seq, command, payload, answer) in [(2, COUNTER_ADD, &b"5"[..], &b"5"[..]), (3, COUNTER_GET, b"", b"5")] {
        raw.send(&Envelope::new(command, seq, 0, payload)).await;
        let env = raw.recv().await.unwrap();
        assert_eq!((env.cmd, env.seq, env.flags, &*env.payload), (command, seq, flags::RESPONSE, answer));
    }
    // STREAM answers `ok` and pushes its items, which may overtake the answer.
    raw.send(&Envelope::new(STREAM, 4, 0, b"3")).await;
    let (mut answered, mut items) = (false, Vec::new());
    for _ in 0..4 {
        let env = raw.recv().await.unwrap();
        if env.flags == flags::RESPONSE {
            assert_eq!((env.cmd, env.seq, &*env.payload), (STREAM, 4, &b"ok"[..]));
            answered = true;
        } else {
            assert_eq!((env.cmd, env.flags, env.seq), (STREAM_ITEM, flags::PUSH, 0));
            items.push(String::from_utf8(env.payload.into_owned()).unwrap());
        }
    }
    assert!(answered);
    assert_eq!(items, ["0", "1", "2"]);
    raw.send(&Envelope::new(COUNTER_ADD, 5, 0, b"five")).await;
    let (env, e) = raw.expect_error(ErrorCode::BackendError).await;
    assert!(env.server_seq > 0, "an error in place of a game server's answer is sequenced");
    assert!(e.message.contains("game server error 400"), "{e:?}");
}

#[test]
fn the_transcript_matcher_understands_ellipses() {
    assert!(glob("a…c", "abbbc"));
    assert!(glob("{\"id\":…,\"t\":\"…\"}", "{\"id\":42,\"t\":\"xyz\"}"));
    assert!(!glob("a…c", "abd"));
    assert!(glob("exact", "exact") && !glob("exact", "exactly"));
}
