//! The core in memory with simulated time: no sockets, no clock.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use portcullis_proto::framework::{Payload, PayloadForm};
use portcullis_proto::link::encode_frame;
use portcullis_proto::pb::client::{
    Delivery, Error as ErrorMsg, ErrorCode, GroupRequest, Kick, LoginReply, LoginRequest, SendResult, SendToGroup,
    SendToUser, SendToUsers,
};
use portcullis_proto::pb::link::{self as pbl, link_frame::Kind};
use portcullis_proto::token::{sign, Claims};
use portcullis_proto::{cmd, flags, Codec, Envelope, Framing};
use prost::Message;

use super::*;
use crate::shard::Shared;
use crate::Transport;

const SECRET: &str = "0123456789abcdef0123";
const UNIX_START: u64 = 1_800_000_000;

fn config(extra: &str) -> Config {
    let text = format!(
        r#"
        [gateway]
        heartbeat_timeout_ms = 30000
        max_frame_bytes = 1024
        {extra}
        [[listeners]]
        bind = "127.0.0.1:7000"
        codec = "protobuf"
        [[listeners]]
        bind = "127.0.0.1:7001"
        codec = "text"
        [[listeners]]
        bind = "127.0.0.1:7002"
        codec = "json"
        [[listeners]]
        bind = "127.0.0.1:7003"
        codec = "flatbuffers"
        [auth]
        kind = "token"
        secret = "{SECRET}"
        [[services]]
        name = "game"
        servers = ["127.0.0.1:9000", "127.0.0.1:9001"]
        [[routes]]
        commands = [1000, 1999]
        service = "game"
        "#
    );
    Config::parse(&text, "test").unwrap()
}

fn token(user: &str) -> String {
    token_for(user, "pc")
}

fn token_for(user: &str, device: &str) -> String {
    sign(
        SECRET.as_bytes(),
        &Claims { uid: user.into(), dev: device.into(), exp: UNIX_START + 3600, role: String::new() },
    )
}

/// Cores (one per worker) plus a perfect network: every transmit is
/// delivered at once, except to clients marked as not reading; game servers
/// answer health checks unless muted.
struct Harness {
    cores: Vec<Gateway>,
    now: Instant,
    next_conn: u64,
    worker_of: HashMap<ConnId, usize>,
    codec: HashMap<ConnId, Codec>,
    received: HashMap<ConnId, Vec<u8>>,
    closed: HashSet<ConnId>,
    not_reading: HashSet<ConnId>,
    link_sent: HashMap<(usize, LinkId), Vec<Kind>>,
    connects: Vec<(usize, LinkId)>,
    muted: HashSet<(usize, LinkId)>,
}

impl Harness {
    fn new(extra: &str) -> Harness {
        Self::with_workers(extra, 1)
    }

    fn with_workers(extra: &str, workers: usize) -> Harness {
        Self::with_config(config(extra), workers)
    }

    fn with_config(c: Config, workers: usize) -> Harness {
        let now = Instant::now();
        let shared = Shared::new(workers, [7; 32]);
        let cores = (0..workers)
            .map(|w| {
                Gateway::new(
                    &c,
                    w,
                    shared.clone(),
                    crate::auth::from_config(&c).unwrap(),
                    now,
                    Duration::from_secs(UNIX_START),
                )
            })
            .collect();
        let mut h = Harness {
            cores,
            now,
            next_conn: 1,
            worker_of: HashMap::new(),
            codec: HashMap::new(),
            received: HashMap::new(),
            closed: HashSet::new(),
            not_reading: HashSet::new(),
            link_sent: HashMap::new(),
            connects: Vec::new(),
            muted: HashSet::new(),
        };
        h.flush();
        h
    }

    fn core(&mut self, conn: ConnId) -> &mut Gateway {
        let w = self.worker_of[&conn];
        &mut self.cores[w]
    }

    /// Carries out every output of every core and every cross-worker
    /// message until nothing moves.
    fn flush(&mut self) {
        loop {
            let mut moved = false;
            for w in 0..self.cores.len() {
                self.cores[w].handle_inbox(self.now);
                while let Some(out) = self.cores[w].poll_output() {
                    moved = true;
                    self.carry_out(w, out);
                }
            }
            let shared = self.cores[0].shared().clone();
            if !moved && (0..self.cores.len()).all(|w| shared.pending(w) == 0) {
                return;
            }
        }
    }

    fn carry_out(&mut self, w: usize, out: Output) {
        let core = &mut self.cores[w];
        match out {
            Output::Transmit(c) => {
                if !self.not_reading.contains(&c) {
                    let bytes = core.outbound(c).to_vec();
                    core.consume(c, bytes.len());
                    self.received.entry(c).or_default().extend(bytes);
                }
            }
            Output::Close(c) => {
                let bytes = core.outbound(c).to_vec();
                self.received.entry(c).or_default().extend(bytes);
                self.closed.insert(c);
                core.handle_disconnect(self.now, c);
            }
            Output::ConnectLink(l, _) => self.connects.push((w, l)),
            Output::TransmitLink(l) => {
                let bytes = core.link_outbound(l).to_vec();
                core.consume_link(l, bytes.len());
                let mut pos = 0;
                while let Some((r, used)) = Framing::LengthPrefixed.next_frame(&bytes[pos..], usize::MAX).unwrap() {
                    let kind = pbl::LinkFrame::decode(&bytes[pos + r.start..pos + r.end]).unwrap().kind.unwrap();
                    pos += used;
                    match kind {
                        Kind::Ping(p) if !self.muted.contains(&(w, l)) => {
                            let mut pong = Vec::new();
                            encode_frame(Kind::Pong(pbl::Pong { nonce: p.nonce }), &mut pong);
                            core.handle_link_data(self.now, l, &pong);
                        }
                        Kind::Ping(_) | Kind::Hello(_) => {}
                        other => self.link_sent.entry((w, l)).or_default().push(other),
                    }
                }
            }
            Output::CloseLink(_) => {}
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        for core in &mut self.cores {
            core.handle_timeout(self.now);
        }
        self.flush();
    }

    fn connect(&mut self, codec: Codec) -> ConnId {
        self.connect_on(0, codec)
    }

    fn connect_on(&mut self, worker: usize, codec: Codec) -> ConnId {
        self.connect_from(worker, codec, [127, 0, 0, 1])
    }

    fn connect_from(&mut self, worker: usize, codec: Codec, ip: [u8; 4]) -> ConnId {
        let listener =
            [Codec::Protobuf, Codec::Text, Codec::Json, Codec::Flatbuffers].iter().position(|c| *c == codec).unwrap();
        // Connections alternate between the transports: the core must not
        // care which one owns a connection.
        let transport = Transport::ALL[self.next_conn as usize % Transport::COUNT];
        let id = ConnId::new(transport, self.next_conn);
        self.next_conn += 1;
        self.codec.insert(id, codec);
        self.worker_of.insert(id, worker);
        let now = self.now;
        self.cores[worker].handle_connect(now, id, listener, SocketAddr::from((ip, 5000)));
        self.flush();
        id
    }

    fn drop_conn(&mut self, conn: ConnId) {
        let now = self.now;
        self.core(conn).handle_disconnect(now, conn);
        self.closed.insert(conn);
        self.flush();
    }

    fn raw(&mut self, conn: ConnId, bytes: &[u8]) {
        let now = self.now;
        self.core(conn).handle_data(now, conn, bytes);
        self.flush();
    }

    fn frame(&self, conn: ConnId, env: &Envelope<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        self.codec[&conn].encode(env, &mut out);
        out
    }

    fn send(&mut self, conn: ConnId, env: &Envelope<'_>) {
        let bytes = self.frame(conn, env);
        self.raw(conn, &bytes);
    }

    fn send_msg<M: Payload>(&mut self, conn: ConnId, cmd: u32, seq: u32, msg: &M) {
        let body = self.codec[&conn].payload_form().encode_to_vec(msg);
        self.send(conn, &Envelope::new(cmd, seq, 0, &body));
    }

    /// Every frame the client received since the last call.
    fn take(&mut self, conn: ConnId) -> Vec<Envelope<'static>> {
        let codec = self.codec[&conn];
        let buf = self.received.remove(&conn).unwrap_or_default();
        let mut frames = Vec::new();
        let mut pos = 0;
        while let Some((range, used)) = codec.framing().next_frame(&buf[pos..], usize::MAX).unwrap() {
            frames.push(codec.decode(&buf[pos + range.start..pos + range.end]).unwrap().into_owned());
            pos += used;
        }
        assert_eq!(pos, buf.len(), "a partial frame was sent");
        frames
    }

    fn form(&self, conn: ConnId) -> PayloadForm {
        self.codec[&conn].payload_form()
    }

    fn login(&mut self, conn: ConnId, user: &str) -> LoginReply {
        self.login_as(conn, user, "pc")
    }

    fn login_as(&mut self, conn: ConnId, user: &str, device: &str) -> LoginReply {
        self.send_msg(conn, cmd::LOGIN, 1, &LoginRequest { token: token_for(user, device), ..Default::default() });
        let frames = self.take(conn);
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!((frames[0].cmd, frames[0].seq, frames[0].flags), (cmd::LOGIN, 1, flags::RESPONSE), "{frames:?}");
        self.form(conn).decode(&frames[0].payload).unwrap()
    }

    fn expect_error(&mut self, conn: ConnId, code: ErrorCode) -> ErrorMsg {
        let frames = self.take(conn);
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0].cmd, cmd::ERROR, "{frames:?}");
        let e: ErrorMsg = self.form(conn).decode(&frames[0].payload).unwrap();
        assert_eq!(e.code, code as i32, "{e:?}");
        assert!(!e.message.is_empty());
        e
    }

    fn links_up(&mut self) {
        self.links_up_keeping_frames();
        self.link_sent.clear();
    }

    /// Connects the pending links; what they are sent first stays readable.
    fn links_up_keeping_frames(&mut self) {
        for (w, l) in std::mem::take(&mut self.connects) {
            let now = self.now;
            self.cores[w].handle_link_connected(now, l);
        }
        self.flush();
    }

    /// Link frames game server `link` of worker 0 received since the last call.
    fn link_frames(&mut self, link: LinkId) -> Vec<Kind> {
        self.link_frames_of(0, link)
    }

    fn link_frames_of(&mut self, worker: usize, link: LinkId) -> Vec<Kind> {
        self.link_sent.remove(&(worker, link)).unwrap_or_default()
    }

    /// The first request any game server of worker 0 received, and its link.
    fn first_request(&mut self) -> Option<(LinkId, pbl::Request)> {
        (0..self.cores[0].links.len()).find_map(|l| {
            self.link_frames(l).into_iter().find_map(|k| if let Kind::Request(r) = k { Some((l, r)) } else { None })
        })
    }

    fn server_sends(&mut self, link: LinkId, kind: Kind) {
        self.server_sends_on(0, link, kind);
    }

    fn server_sends_on(&mut self, worker: usize, link: LinkId, kind: Kind) {
        let mut bytes = Vec::new();
        encode_frame(kind, &mut bytes);
        let now = self.now;
        self.cores[worker].handle_link_data(now, link, &bytes);
        self.flush();
    }

    /// Answers every request game server `link` (worker 0) received with its payload.
    fn echo_requests(&mut self, link: LinkId) -> usize {
        let frames = self.link_frames(link);
        let mut n = 0;
        for f in frames {
            if let Kind::Request(r) = f {
                n += 1;
                let reply = pbl::Reply {
                    session_id: r.session_id,
                    cmd: r.cmd,
                    seq: r.seq,
                    payload: r.payload,
                    request_id: r.request_id,
                    ..Default::default()
                };
                self.server_sends(link, Kind::Reply(reply));
            }
        }
        n
    }
}

#[test]
fn login_logout_and_the_reply_fields() {
    for codec in Codec::ALL {
        let mut h = Harness::new("");
        let c = h.connect(codec);
        let reply = h.login(c, "alice");
        assert_eq!(reply.user_id, "alice", "{codec}");
        assert_eq!(reply.device, "pc");
        assert_eq!(reply.heartbeat_interval_ms, 10_000);
        assert_eq!(h.cores[0].sessions().of_user("alice").len(), 1);
        h.send(c, &Envelope::new(cmd::LOGOUT, 2, 0, b""));
        let frames = h.take(c);
        assert_eq!((frames[0].cmd, frames[0].seq, frames[0].flags), (cmd::LOGOUT, 2, flags::RESPONSE));
        assert!(h.closed.contains(&c));
        assert_eq!(h.cores[0].sessions().of_user("alice").len(), 0);
        assert_eq!(h.cores[0].connection_count(), 0);
    }
}

#[test]
fn login_refusals() {
    let mut h = Harness::new("");
    let c = h.connect(Codec::Protobuf);
    h.send_msg(c, cmd::LOGIN, 1, &LoginRequest { token: "not-a-token".into(), ..Default::default() });
    h.expect_error(c, ErrorCode::AuthFailed);
    let forged = sign(
        b"wrong-secret-wrong-secret",
        &Claims { uid: "eve".into(), dev: String::new(), exp: u64::MAX, role: String::new() },
    );
    h.send_msg(c, cmd::LOGIN, 2, &LoginRequest { token: forged, ..Default::default() });
    assert!(h.expect_error(c, ErrorCode::AuthFailed).message.contains("signature"));
    let expired = sign(
        SECRET.as_bytes(),
        &Claims { uid: "bob".into(), dev: String::new(), exp: UNIX_START - 1, role: String::new() },
    );
    h.send_msg(c, cmd::LOGIN, 3, &LoginRequest { token: expired, ..Default::default() });
    assert!(h.expect_error(c, ErrorCode::AuthFailed).message.contains("expired"));
    h.send(c, &Envelope::new(cmd::LOGIN, 4, 0, &[0xff, 0xff]));
    h.expect_error(c, ErrorCode::BadPayload);
    h.login(c, "bob");
    h.send_msg(c, cmd::LOGIN, 5, &LoginRequest { token: token("bob"), ..Default::default() });
    h.expect_error(c, ErrorCode::AlreadyLoggedIn);
    assert_eq!(h.cores[0].stats().drop_auth_failed, 3);
}

#[test]
fn business_and_group_commands_before_login_are_refused() {
    let mut h = Harness::new("");
    h.links_up();
    let c = h.connect(Codec::Protobuf);
    h.send(c, &Envelope::new(1000, 9, 0, b"hi"));
    let e = h.expect_error(c, ErrorCode::NotLoggedIn);
    assert_eq!(e.cmd, 1000);
    h.send_msg(c, cmd::JOIN_GROUP, 10, &GroupRequest { group: "g".into() });
    h.expect_error(c, ErrorCode::NotLoggedIn);
    // Heartbeats are fine before login.
    h.send(c, &Envelope::new(cmd::HEARTBEAT, 11, 0, b""));
    assert_eq!(h.take(c)[0].flags, flags::RESPONSE);
    assert!(h.link_frames(0).is_empty() && h.link_frames(1).is_empty(), "nothing reached a game server");
}

#[test]
fn heartbeat_deadline_closes_idle_sessions_only() {
    let mut h = Harness::new("");
    let idle = h.connect(Codec::Protobuf);
    let busy = h.connect(Codec::Text);
    h.login(idle, "idle");
    h.login(busy, "busy");
    for _ in 0..5 {
        h.advance(Duration::from_secs(10));
        h.send(busy, &Envelope::new(cmd::HEARTBEAT, 1, 0, b""));
        h.take(busy);
    }
    assert!(h.closed.contains(&idle));
    assert!(!h.closed.contains(&busy));
    assert!(h.take(idle).iter().all(|f| f.cmd != cmd::KICK), "no KICK: the session waits for a RESUME");
    assert_eq!(h.cores[0].sessions().of_user("idle").len(), 1, "kept for the resume window");
    assert!(h.cores[0].sessions().get(h.cores[0].sessions().of_user("idle")[0]).unwrap().conn.is_none());
    assert_eq!(h.cores[0].stats().heartbeat_timeouts, 1);
    // Just before the deadline a session survives; at it, it is closed.
    h.advance(Duration::from_millis(29_000));
    assert!(!h.closed.contains(&busy));
    h.advance(Duration::from_millis(1_000));
    assert!(h.closed.contains(&busy));
}

#[test]
fn poll_timeout_bounds_the_wait_until_the_deadline() {
    let h = Harness::new("");
    let t = h.cores[0].poll_timeout().unwrap();
    assert!(t > h.now && t <= h.now + Duration::from_secs(30));
}

#[test]
fn group_fan_out_excludes_the_sender_and_crosses_codecs() {
    let mut h = Harness::new("");
    let conns: Vec<_> = Codec::ALL.iter().map(|c| h.connect(*c)).collect();
    for (i, &c) in conns.iter().enumerate() {
        h.login(c, &format!("u{i}"));
        h.send_msg(c, cmd::JOIN_GROUP, 2, &GroupRequest { group: "room".into() });
        assert_eq!(h.take(c)[0].flags, flags::RESPONSE);
    }
    let outsider = h.connect(Codec::Protobuf);
    h.login(outsider, "outsider");
    let sender = conns[0];
    h.send_msg(
        sender,
        cmd::SEND_TO_GROUP,
        3,
        &SendToGroup { group: "room".into(), payload: b"hello room".to_vec(), include_self: false },
    );
    let answer = h.take(sender);
    assert_eq!(answer.len(), 1);
    let result: SendResult = h.form(sender).decode(&answer[0].payload).unwrap();
    assert_eq!(result.delivered, 3);
    for (i, &c) in conns.iter().enumerate().skip(1) {
        let frames = h.take(c);
        assert_eq!(frames.len(), 1, "codec {}", Codec::ALL[i]);
        assert_eq!((frames[0].cmd, frames[0].flags), (cmd::SEND_TO_GROUP, flags::PUSH));
        let d: Delivery = h.form(c).decode(&frames[0].payload).unwrap();
        assert_eq!((d.from_user_id.as_str(), d.group.as_str(), &d.payload[..]), ("u0", "room", &b"hello room"[..]));
    }
    assert!(h.take(outsider).is_empty());
    // include_self, then leave.
    h.send_msg(
        sender,
        cmd::SEND_TO_GROUP,
        4,
        &SendToGroup { group: "room".into(), payload: b"x".to_vec(), include_self: true },
    );
    assert_eq!(h.take(sender).len(), 2);
    for &c in &conns[1..] {
        assert_eq!(h.take(c).len(), 1);
    }
    h.send_msg(conns[1], cmd::LEAVE_GROUP, 5, &GroupRequest { group: "room".into() });
    h.take(conns[1]);
    h.send_msg(
        sender,
        cmd::SEND_TO_GROUP,
        6,
        &SendToGroup { group: "room".into(), payload: b"y".to_vec(), include_self: false },
    );
    h.take(sender);
    assert!(h.take(conns[1]).iter().all(|f| f.cmd != cmd::SEND_TO_GROUP));
    assert_eq!(h.take(conns[2]).len(), 1);
}

#[test]
fn send_to_user_reaches_every_session_of_the_user_once() {
    let mut h = Harness::new("");
    let a = h.connect(Codec::Protobuf);
    let b1 = h.connect(Codec::Protobuf);
    let b2 = h.connect(Codec::Json);
    let c = h.connect(Codec::Protobuf);
    h.login(a, "alice");
    h.login(b1, "bob");
    h.login(b2, "bob");
    h.login(c, "carol");
    h.send_msg(a, cmd::SEND_TO_USER, 2, &SendToUser { user_id: "bob".into(), payload: b"psst".to_vec() });
    let r: SendResult = h.form(a).decode(&h.take(a)[0].payload).unwrap();
    assert_eq!(r.delivered, 2);
    for conn in [b1, b2] {
        let frames = h.take(conn);
        assert_eq!(frames.len(), 1);
        let d: Delivery = h.form(conn).decode(&frames[0].payload).unwrap();
        assert_eq!((d.from_user_id.as_str(), &d.payload[..]), ("alice", &b"psst"[..]));
    }
    let users = SendToUsers {
        user_ids: vec!["bob".into(), "carol".into(), "bob".into(), "nobody".into()],
        payload: b"all".to_vec(),
    };
    h.send_msg(a, cmd::SEND_TO_USERS, 3, &users);
    let r: SendResult = h.form(a).decode(&h.take(a)[0].payload).unwrap();
    assert_eq!(r.delivered, 3, "bob twice and carol once, nobody ignored");
    assert_eq!(h.take(b1).len(), 1);
    assert_eq!(h.take(c).len(), 1);
}

#[test]
fn business_commands_are_routed_round_robin_and_answered() {
    let mut h = Harness::new("");
    let c = h.connect(Codec::Protobuf);
    let login = h.login(c, "alice");
    // No game server is up yet.
    h.send(c, &Envelope::new(1000, 2, 0, b"early"));
    h.expect_error(c, ErrorCode::BackendUnavailable);
    h.links_up();
    for seq in 3..7 {
        h.send(c, &Envelope::new(1001, seq, 0, b"ping").with_route_key(b"room-9"));
    }
    let (l0, l1) = (h.link_frames(0), h.link_frames(1));
    assert_eq!((l0.len(), l1.len()), (2, 2), "round robin over two servers");
    let Kind::Request(req) = &l0[0] else { panic!("{l0:?}") };
    assert_eq!((req.session_id, req.user_id.as_str(), req.cmd, req.seq), (login.session_id, "alice", 1001, 3));
    assert_eq!((&req.payload[..], req.route_key.as_deref()), (&b"ping"[..], Some(&b"room-9"[..])));
    let Kind::Request(req4) = &l1[0] else { panic!("{l1:?}") };
    let (rid3, rid4) = (req.request_id, req4.request_id);
    let reply = pbl::Reply {
        session_id: login.session_id,
        cmd: 1001,
        seq: 3,
        payload: b"pong".to_vec(),
        request_id: rid3,
        ..Default::default()
    };
    h.server_sends(0, Kind::Reply(reply.clone()));
    let frames = h.take(c);
    assert_eq!(frames.len(), 1);
    assert_eq!(
        (frames[0].cmd, frames[0].seq, frames[0].flags, &*frames[0].payload),
        (1001, 3, flags::RESPONSE, &b"pong"[..])
    );
    assert!(frames[0].server_seq > 0, "answers to a logged-in session are sequenced");
    // A second reply to the same request is dropped.
    h.server_sends(0, Kind::Reply(reply));
    assert!(h.take(c).is_empty());
    assert_eq!(h.cores[0].stats().drop_late_reply, 1);
    h.server_sends(
        1,
        Kind::Reply(pbl::Reply {
            session_id: login.session_id,
            cmd: 1001,
            seq: 4,
            error: 7,
            error_message: "no such room".into(),
            request_id: rid4,
            ..Default::default()
        }),
    );
    assert!(h.expect_error(c, ErrorCode::BackendError).message.contains("no such room"));
    // Unrouted business command.
    h.send(c, &Envelope::new(5000, 8, 0, b""));
    h.expect_error(c, ErrorCode::UnknownCommand);
    // The game servers hear when the session ends.
    h.send(c, &Envelope::new(cmd::LOGOUT, 9, 0, b""));
    for link in [0, 1] {
        let frames = h.link_frames(link);
        assert!(matches!(&frames[..], [Kind::SessionClosed(s)] if s.session_id == login.session_id), "{frames:?}");
    }
}

#[test]
fn game_server_pushes_reach_sessions_users_groups_and_everyone() {
    let mut h = Harness::new("");
    h.links_up();
    let a = h.connect(Codec::Protobuf);
    let b = h.connect(Codec::Text);
    let anon = h.connect(Codec::Protobuf);
    let la = h.login(a, "alice");
    h.login(b, "bob");
    h.send_msg(b, cmd::JOIN_GROUP, 2, &GroupRequest { group: "guild".into() });
    h.take(b);
    h.server_sends(
        0,
        Kind::PushToSession(pbl::PushToSession {
            session_id: la.session_id,
            cmd: 1500,
            payload: b"s".to_vec(),
            ..Default::default()
        }),
    );
    h.server_sends(
        0,
        Kind::PushToUser(pbl::PushToUser {
            user_id: "bob".into(),
            cmd: 1501,
            payload: b"u".to_vec(),
            ..Default::default()
        }),
    );
    h.server_sends(
        1,
        Kind::PushToGroup(pbl::PushToGroup {
            group: "guild".into(),
            cmd: 1502,
            payload: b"g".to_vec(),
            ..Default::default()
        }),
    );
    h.server_sends(1, Kind::Broadcast(pbl::Broadcast { cmd: 1503, payload: b"all".to_vec(), ..Default::default() }));
    let cmds = |frames: Vec<Envelope<'static>>| {
        frames.iter().map(|f| (f.cmd, f.flags, f.payload.to_vec())).collect::<Vec<_>>()
    };
    assert_eq!(cmds(h.take(a)), [(1500, flags::PUSH, b"s".to_vec()), (1503, flags::PUSH, b"all".to_vec())]);
    assert_eq!(
        cmds(h.take(b)),
        [(1501, flags::PUSH, b"u".to_vec()), (1502, flags::PUSH, b"g".to_vec()), (1503, flags::PUSH, b"all".to_vec())]
    );
    assert!(h.take(anon).is_empty(), "broadcasts reach logged-in sessions only");
}

#[test]
fn framing_split_frames_and_several_frames_per_read() {
    let mut h = Harness::new("");
    let c = h.connect(Codec::Protobuf);
    let login = h.frame(
        c,
        &Envelope::new(
            cmd::LOGIN,
            1,
            0,
            &PayloadForm::Protobuf.encode_to_vec(&LoginRequest { token: token("al"), ..Default::default() }),
        ),
    );
    // One byte at a time.
    for byte in &login {
        h.raw(c, std::slice::from_ref(byte));
    }
    assert_eq!(h.take(c).len(), 1);
    // Three frames and half of a fourth in one read, then the rest.
    let mut stream = Vec::new();
    for seq in 10..14 {
        stream.extend(h.frame(c, &Envelope::new(cmd::HEARTBEAT, seq, 0, b"")));
    }
    let cut = stream.len() - 2;
    h.raw(c, &stream[..cut]);
    assert_eq!(h.take(c).iter().map(|f| f.seq).collect::<Vec<_>>(), [10, 11, 12]);
    h.raw(c, &stream[cut..]);
    assert_eq!(h.take(c).iter().map(|f| f.seq).collect::<Vec<_>>(), [13]);
    // Text lines, split mid-line.
    let t = h.connect(Codec::Text);
    h.raw(t, b"HEARTBEAT 1\nHEART");
    h.raw(t, b"BEAT 2\r\n");
    assert_eq!(h.take(t).iter().map(|f| f.seq).collect::<Vec<_>>(), [1, 2]);
}

#[test]
fn frames_over_the_maximum_are_refused_and_close_the_connection() {
    let mut h = Harness::new("");
    let c = h.connect(Codec::Protobuf);
    let exact = h.frame(c, &Envelope::new(cmd::HEARTBEAT, 1, 0, &[0; 1017]));
    assert_eq!(exact.len(), 4 + 1024, "a frame of exactly the maximum");
    h.raw(c, &exact);
    assert_eq!(h.take(c)[0].seq, 1);
    let over = h.frame(c, &Envelope::new(cmd::HEARTBEAT, 2, 0, &[0; 1018]));
    h.raw(c, &over[..4]);
    h.expect_error(c, ErrorCode::FrameTooLarge);
    assert!(h.closed.contains(&c));
    // Text: a line that never ends.
    let t = h.connect(Codec::Text);
    h.raw(t, &[b'a'; 1025]);
    h.expect_error(t, ErrorCode::FrameTooLarge);
    assert!(h.closed.contains(&t));
}

#[test]
fn garbage_and_unknown_commands_get_errors_then_a_close() {
    let mut h = Harness::new("");
    let c = h.connect(Codec::Text);
    h.login(c, "al");
    h.raw(c, b"what is this\n");
    h.expect_error(c, ErrorCode::BadFrame);
    h.send(c, &Envelope::new(cmd::KICK, 2, 0, b""));
    assert!(h.expect_error(c, ErrorCode::UnknownCommand).message.contains("sent by the gateway"));
    h.send(c, &Envelope::new(500, 3, 0, b""));
    h.expect_error(c, ErrorCode::UnknownCommand);
    let p = h.connect(Codec::Protobuf);
    for i in 0..8 {
        assert!(!h.closed.contains(&p), "closed after {i} bad frames");
        h.raw(p, &[0, 0, 0, 2, 0xff, 0xff]);
    }
    assert!(h.closed.contains(&p), "closed at max_bad_frames");
    assert_eq!(h.take(p).len(), 8, "each bad frame was answered");
    assert!(!h.closed.contains(&c));
}

#[test]
fn a_client_that_stops_reading_is_cut_off_and_others_are_served() {
    let mut h = Harness::new("max_outbound_bytes = 4096");
    h.links_up();
    let reader = h.connect(Codec::Protobuf);
    let stalled = h.connect(Codec::Protobuf);
    h.login(reader, "r");
    h.login(stalled, "s");
    h.not_reading.insert(stalled);
    for _ in 0..100 {
        h.server_sends(0, Kind::Broadcast(pbl::Broadcast { cmd: 1500, payload: vec![1; 100], ..Default::default() }));
    }
    assert!(h.closed.contains(&stalled));
    assert!(!h.closed.contains(&reader));
    assert_eq!(h.take(reader).len(), 100);
    assert_eq!(h.cores[0].stats().slow_consumers, 1);
}

#[test]
fn a_failed_link_is_reconnected_after_the_delay() {
    let mut h = Harness::new("");
    h.links_up();
    h.cores[0].handle_link_closed(h.now, 0);
    h.advance(Duration::from_millis(50));
    assert!(h.connects.is_empty());
    h.advance(Duration::from_millis(50));
    assert_eq!(h.connects, [(0, 0)], "first retry after reconnect_ms");
    // The retry fails too: the next waits twice as long.
    h.cores[0].handle_link_closed(h.now, 0);
    h.connects.clear();
    h.advance(Duration::from_millis(150));
    assert!(h.connects.is_empty());
    h.advance(Duration::from_millis(50));
    assert_eq!(h.connects, [(0, 0)], "backoff doubled");
    // While down, requests go to the other server.
    let c = h.connect(Codec::Protobuf);
    h.login(c, "al");
    h.send(c, &Envelope::new(1000, 2, 0, b""));
    h.send(c, &Envelope::new(1000, 3, 0, b""));
    assert_eq!(h.link_frames(1).len(), 2);
    // Garbage from a game server closes its link.
    h.cores[0].handle_link_data(h.now, 1, &[0, 0, 0, 1, 0xff]);
    h.flush();
    assert_eq!(h.cores[0].links_up(), 0);
    assert_eq!(h.cores[0].stats().drop_bad_link_frame, 1);
}

#[test]
fn shutdown_kicks_everyone_with_a_reconnect_notice() {
    let mut h = Harness::new("");
    let a = h.connect(Codec::Protobuf);
    h.login(a, "a");
    h.cores[0].shutdown(h.now);
    h.flush();
    let frames = h.take(a);
    let kick: Kick = h.form(a).decode(&frames[0].payload).unwrap();
    assert!(kick.reason.contains("reconnect"));
    assert!(h.closed.contains(&a));
    let late = h.connect(Codec::Protobuf);
    assert!(h.closed.contains(&late));
}

mod admin;
mod encryption;
mod hostile;
mod resilience;
mod security;
