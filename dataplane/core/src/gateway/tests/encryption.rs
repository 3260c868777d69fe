//! Encrypted sessions in memory with simulated time: the handshake on every
//! codec, frames refused when tampered, replayed or reordered, listeners
//! that require encryption, RESUME with fresh keys.

use portcullis_proto::crypto::{resume_nonce, Cipher, ConnectionKeys, KeyShare, SessionSecret, TAG_LEN};
use portcullis_proto::pb::client::{ResumeReply, ResumeRequest};

use super::*;
use crate::config::Encryption;

/// The client's side of an encrypted session.
struct Peer {
    secret: SessionSecret,
    cipher: Cipher,
    keys: ConnectionKeys,
}

impl Peer {
    /// Seals `env` as the client's next frame.
    fn seal(&mut self, env: &Envelope<'_>) -> Envelope<'static> {
        let mut env = env.clone().into_owned();
        env.flags |= flags::ENCRYPTED;
        let mut buf = env.payload.to_vec();
        self.keys.client_to_server.seal(&env, &mut buf).unwrap();
        env.payload = buf.into();
        env
    }

    /// Opens a frame from the gateway, which must be sealed.
    fn open(&mut self, env: Envelope<'static>) -> Envelope<'static> {
        assert!(env.is_encrypted(), "a clear frame on an encrypted session: {env:?}");
        let mut buf = env.payload.to_vec();
        let len = self.keys.server_to_client.open(&env, &mut buf).expect("the gateway's frame opens").len();
        buf.truncate(len);
        Envelope { payload: buf.into(), ..env }
    }
}

/// The test config with listener `i` (0 protobuf, 1 text, 2 json,
/// 3 flatbuffers) set to `mode` and `cipher`.
fn harness_with(i: usize, mode: Encryption, cipher: Option<Cipher>, workers: usize) -> Harness {
    let mut c = config("");
    c.listeners[i].encryption = mode;
    c.listeners[i].cipher = cipher;
    c.validate().unwrap();
    Harness::with_config(c, workers)
}

impl Harness {
    /// Logs in offering a key; the answer must accept it.
    fn login_encrypted(&mut self, conn: ConnId, user: &str) -> (LoginReply, Peer) {
        let share = KeyShare::generate().unwrap();
        let client_key = share.public_key().to_vec();
        let req = LoginRequest { token: token(user), client_key: client_key.clone() };
        self.send_msg(conn, cmd::LOGIN, 1, &req);
        let frames = self.take(conn);
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!((frames[0].cmd, frames[0].flags), (cmd::LOGIN, flags::RESPONSE), "the answer is clear");
        let reply: LoginReply = self.form(conn).decode(&frames[0].payload).unwrap();
        assert_eq!(reply.server_key.len(), 32, "{reply:?}");
        let cipher = Cipher::from_name(&reply.cipher).unwrap();
        let dh = share.agree(&reply.server_key).unwrap();
        let secret = SessionSecret::derive(&dh, &client_key, &reply.server_key);
        let keys = secret.connection_keys(cipher, &client_key, &reply.server_key);
        (reply, Peer { secret, cipher, keys })
    }

    fn send_sealed(&mut self, conn: ConnId, peer: &mut Peer, env: &Envelope<'_>) {
        let sealed = peer.seal(env);
        self.send(conn, &sealed);
    }

    /// Every frame received since the last call, opened.
    fn take_open(&mut self, conn: ConnId, peer: &mut Peer) -> Vec<Envelope<'static>> {
        self.take(conn).into_iter().map(|f| peer.open(f)).collect()
    }

    /// RESUMEs an encrypted session on `conn` with a fresh nonce: the
    /// answer (clear) and the replayed frames, opened with the new keys.
    fn resume_encrypted(
        &mut self,
        conn: ConnId,
        peer: &Peer,
        token: &str,
        last: u64,
    ) -> (ResumeReply, Peer, Vec<Envelope<'static>>) {
        let nonce = resume_nonce().unwrap();
        let req = ResumeRequest { resume_token: token.into(), last_server_seq: last, client_nonce: nonce.to_vec() };
        self.send_msg(conn, cmd::RESUME, 5, &req);
        let mut frames = self.take(conn).into_iter();
        let first = frames.next().expect("an answer");
        assert_eq!((first.cmd, first.flags), (cmd::RESUME, flags::RESPONSE), "{first:?}");
        let reply: ResumeReply = self.form(conn).decode(&first.payload).unwrap();
        assert_eq!((reply.server_nonce.len(), reply.cipher.as_str()), (32, peer.cipher.name()), "{reply:?}");
        let keys = peer.secret.connection_keys(peer.cipher, &nonce, &reply.server_nonce);
        let mut next = Peer { secret: peer.secret.clone(), cipher: peer.cipher, keys };
        let replayed = frames.map(|f| next.open(f)).collect();
        (reply, next, replayed)
    }

    /// The error of the one frame received, opened with `peer`'s keys.
    fn expect_sealed_error(&mut self, conn: ConnId, peer: &mut Peer, code: ErrorCode) -> ErrorMsg {
        let frames = self.take_open(conn, peer);
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0].cmd, cmd::ERROR, "{frames:?}");
        let e: ErrorMsg = self.form(conn).decode(&frames[0].payload).unwrap();
        assert_eq!(e.code, code as i32, "{e:?}");
        e
    }
}

#[test]
fn an_encrypted_session_works_on_every_codec_and_both_ciphers() {
    for cipher in Cipher::ALL {
        for (i, codec) in [Codec::Protobuf, Codec::Text, Codec::Json, Codec::Flatbuffers].into_iter().enumerate() {
            let mut h = harness_with(i, Encryption::Optional, Some(cipher), 1);
            h.links_up();
            let c = h.connect(codec);
            let (reply, mut peer) = h.login_encrypted(c, "alice");
            assert_eq!((reply.user_id.as_str(), peer.cipher), ("alice", cipher), "{codec}");
            // A business request: the game server sees the plaintext.
            let payload = [0u8, 0xff, b'\n', b' ', b'h', b'i'];
            h.send_sealed(c, &mut peer, &Envelope::new(1000, 2, 0, &payload).with_route_key(b"room 1"));
            let (link, req) = h.first_request().expect("forwarded");
            assert_eq!((req.payload.as_slice(), req.route_key.as_deref()), (&payload[..], Some(&b"room 1"[..])));
            h.link_sent.entry((0, link)).or_default().push(Kind::Request(req));
            assert_eq!(h.echo_requests(link), 1);
            let frames = h.take_open(c, &mut peer);
            assert_eq!(frames.len(), 1, "{codec}: {frames:?}");
            let f = &frames[0];
            assert_eq!((f.cmd, f.seq, f.server_seq, &*f.payload), (1000, 2, 1, &payload[..]), "{codec}");
            assert_eq!(f.flags, flags::RESPONSE | flags::ENCRYPTED);
            // Framework commands, their payloads in the listener's form.
            let body = h.form(c).encode_to_vec(&GroupRequest { group: "room:1".into() });
            h.send_sealed(c, &mut peer, &Envelope::new(cmd::JOIN_GROUP, 3, 0, &body));
            let msg = SendToGroup { group: "room:1".into(), payload: b"to all".to_vec(), include_self: true };
            let body = h.form(c).encode_to_vec(&msg);
            h.send_sealed(c, &mut peer, &Envelope::new(cmd::SEND_TO_GROUP, 4, 0, &body));
            h.send_sealed(c, &mut peer, &Envelope::new(cmd::HEARTBEAT, 5, 0, b""));
            h.send_sealed(c, &mut peer, &Envelope { ack: 4, ..Envelope::new(cmd::ACK, 0, 0, b"") });
            let frames = h.take_open(c, &mut peer);
            let cmds: Vec<(u32, u32, u64)> = frames.iter().map(|f| (f.cmd, f.seq, f.server_seq)).collect();
            assert_eq!(
                cmds,
                [
                    (cmd::JOIN_GROUP, 3, 2),
                    (cmd::SEND_TO_GROUP, 0, 3),
                    (cmd::SEND_TO_GROUP, 4, 4),
                    (cmd::HEARTBEAT, 5, 0)
                ],
                "{codec}"
            );
            let d: Delivery = h.form(c).decode(&frames[1].payload).unwrap();
            assert_eq!(d.payload, b"to all");
            let sid = h.cores[0].session_of(c).unwrap();
            assert_eq!(h.cores[0].sessions().get(sid).unwrap().replay.len(), 0, "the sealed ACK counted");
            let s = h.cores[0].stats();
            assert_eq!((s.encrypted_logins, s.drop_decrypt_failed, s.drop_not_encrypted), (1, 0, 0));
        }
    }
}

#[test]
fn the_wire_carries_no_plaintext() {
    let mut h = Harness::new("");
    h.links_up();
    let c = h.connect(Codec::Protobuf);
    let (_, mut peer) = h.login_encrypted(c, "alice");
    let secret = b"the treasure is under the old oak";
    let sealed = peer.seal(&Envelope::new(1000, 2, 0, secret));
    let wire = h.frame(c, &sealed);
    assert!(!wire.windows(secret.len()).any(|w| w == secret));
    assert_eq!(sealed.payload.len(), secret.len() + TAG_LEN);
    h.raw(c, &wire);
    let (link, req) = h.first_request().unwrap();
    h.link_sent.entry((0, link)).or_default().push(Kind::Request(req));
    h.echo_requests(link);
    let answer = h.received.get(&c).cloned().unwrap_or_default();
    assert!(!answer.is_empty() && !answer.windows(secret.len()).any(|w| w == secret));
}

#[test]
fn tampered_replayed_and_reordered_frames_are_refused_and_close_the_connection() {
    type Attack = fn(&mut Harness, ConnId, &mut Peer);
    let attacks: [(&str, Attack); 5] = [
        ("tampered payload", |h, c, p| {
            let mut env = p.seal(&Envelope::new(1000, 2, 0, b"pay 10 gold"));
            env.payload.to_mut()[3] ^= 0x20;
            h.send(c, &env);
        }),
        ("tampered header", |h, c, p| {
            let env = p.seal(&Envelope::new(1000, 2, 0, b"pay 10 gold"));
            h.send(c, &Envelope { cmd: 1001, ..env });
        }),
        ("replayed", |h, c, p| {
            let env = p.seal(&Envelope::new(1000, 2, 0, b"pay 10 gold"));
            h.send(c, &env);
            let (link, _) = h.first_request().expect("the first one passes");
            let _ = link;
            h.send(c, &env);
        }),
        ("reordered", |h, c, p| {
            let first = p.seal(&Envelope::new(1000, 2, 0, b"one"));
            let second = p.seal(&Envelope::new(1000, 3, 0, b"two"));
            h.send(c, &second);
            h.send(c, &first);
        }),
        ("dropped", |h, c, p| {
            let _lost = p.seal(&Envelope::new(1000, 2, 0, b"one"));
            h.send_sealed(c, p, &Envelope::new(1000, 3, 0, b"two"));
        }),
    ];
    for (what, attack) in attacks {
        let mut h = Harness::new("");
        h.links_up();
        let c = h.connect(Codec::Protobuf);
        let (_, mut peer) = h.login_encrypted(c, "alice");
        attack(&mut h, c, &mut peer);
        assert!(h.first_request().is_none(), "{what}: nothing more reaches a game server");
        let e = h.expect_sealed_error(c, &mut peer, ErrorCode::DecryptFailed);
        assert!(e.message.contains("decrypt"), "{what}: {e:?}");
        assert!(h.closed.contains(&c), "{what}");
        assert_eq!(h.cores[0].sessions().of_user("alice").len(), 0, "{what}: the session ended");
        assert_eq!(h.cores[0].stats().drop_decrypt_failed, 1, "{what}");
    }
}

#[test]
fn clear_frames_on_encrypted_sessions_and_sealed_frames_on_clear_ones_are_refused() {
    let mut h = Harness::new("");
    h.links_up();
    let c = h.connect(Codec::Json);
    let (_, mut peer) = h.login_encrypted(c, "alice");
    h.send(c, &Envelope::new(1000, 2, 0, b"in the clear"));
    h.expect_sealed_error(c, &mut peer, ErrorCode::EncryptionRequired);
    assert!(h.closed.contains(&c));
    assert!(h.first_request().is_none());
    assert_eq!(h.cores[0].stats().drop_not_encrypted, 1);

    // A session without keys: the ENCRYPTED flag is refused, in the clear.
    let d = h.connect(Codec::Protobuf);
    h.login(d, "bob");
    h.send(d, &Envelope::new(1000, 2, flags::ENCRYPTED, &[0; 32]));
    h.expect_error(d, ErrorCode::DecryptFailed);
    assert!(h.closed.contains(&d));
    // Before login too.
    let e = h.connect(Codec::Text);
    h.send(e, &Envelope::new(cmd::HEARTBEAT, 1, flags::ENCRYPTED, &[0; 16]));
    h.expect_error(e, ErrorCode::DecryptFailed);
    assert!(h.closed.contains(&e));
}

#[test]
fn a_required_listener_refuses_a_clear_login_and_an_off_listener_ignores_keys() {
    let mut h = harness_with(0, Encryption::Required, None, 1);
    let c = h.connect(Codec::Protobuf);
    h.send_msg(c, cmd::LOGIN, 1, &LoginRequest { token: token("alice"), ..Default::default() });
    let e = h.expect_error(c, ErrorCode::EncryptionRequired);
    assert!(e.message.contains("client_key"), "{e:?}");
    assert!(!h.closed.contains(&c), "the client may log in again with a key");
    assert_eq!(h.cores[0].sessions().of_user("alice").len(), 0);
    let (reply, _) = h.login_encrypted(c, "alice");
    assert_eq!(reply.cipher, "aes-128-gcm");
    // A key of the wrong length, a key of small order.
    let d = h.connect(Codec::Protobuf);
    h.send_msg(d, cmd::LOGIN, 1, &LoginRequest { token: token("bob"), client_key: vec![9; 31] });
    h.expect_error(d, ErrorCode::BadPayload);
    h.send_msg(d, cmd::LOGIN, 2, &LoginRequest { token: token("bob"), client_key: vec![0; 32] });
    assert!(h.expect_error(d, ErrorCode::AuthFailed).message.contains("client_key"));
    assert_eq!(h.cores[0].sessions().of_user("bob").len(), 0);

    let mut h = harness_with(0, Encryption::Off, None, 1);
    let c = h.connect(Codec::Protobuf);
    let req = LoginRequest { token: token("alice"), client_key: KeyShare::generate().unwrap().public_key().to_vec() };
    h.send_msg(c, cmd::LOGIN, 1, &req);
    let frames = h.take(c);
    let reply: LoginReply = h.form(c).decode(&frames[0].payload).unwrap();
    assert!(reply.server_key.is_empty() && reply.cipher.is_empty(), "{reply:?}");
    h.send(c, &Envelope::new(cmd::HEARTBEAT, 2, 0, b""));
    assert_eq!(h.take(c)[0].flags, flags::RESPONSE, "the session is clear");
}

#[test]
fn resume_keeps_encryption_with_fresh_keys_and_old_frames_do_not_replay() {
    for workers in [1, 2] {
        let mut h = Harness::with_workers("", workers);
        h.links_up();
        let c = h.connect_on(0, Codec::Flatbuffers);
        let (login, mut peer) = h.login_encrypted(c, "alice");
        let old_frame = peer.seal(&Envelope::new(1000, 2, 0, b"before the drop"));
        h.send(c, &old_frame);
        let (link, req) = h.first_request().unwrap();
        h.link_sent.entry((0, link)).or_default().push(Kind::Request(req));
        h.echo_requests(link);
        assert_eq!(h.take_open(c, &mut peer).len(), 1);
        h.drop_conn(c);
        // Pushed while the session waits: kept, sealed later for the new
        // connection.
        let push = pbl::PushToSession {
            session_id: login.session_id,
            cmd: 1500,
            payload: b"meanwhile".to_vec(),
            ..Default::default()
        };
        h.server_sends(link, Kind::PushToSession(push));

        // RESUME of an encrypted session without a nonce is refused, and
        // the session is still there for a proper one.
        let r = h.connect_on(workers - 1, Codec::Flatbuffers);
        let req = ResumeRequest { resume_token: login.resume_token.clone(), ..Default::default() };
        h.send_msg(r, cmd::RESUME, 5, &req);
        assert!(h.expect_error(r, ErrorCode::ResumeFailed).message.contains("client_nonce"));

        let (reply, mut next, replayed) = h.resume_encrypted(r, &peer, &login.resume_token, 0);
        assert_eq!(reply.replayed, 2, "{reply:?}");
        let got: Vec<(u32, u64, &[u8])> = replayed.iter().map(|f| (f.cmd, f.server_seq, &*f.payload)).collect();
        assert_eq!(got, [(1000, 1, &b"before the drop"[..]), (1500, 2, &b"meanwhile"[..])]);
        // New frames go on under the new keys, both ways.
        h.send_sealed(r, &mut next, &Envelope { ack: 2, ..Envelope::new(cmd::HEARTBEAT, 6, 0, b"") });
        let frames = h.take_open(r, &mut next);
        assert_eq!((frames.len(), frames[0].cmd), (1, cmd::HEARTBEAT));
        // A frame sealed under the login's keys does not open now.
        h.send(r, &old_frame);
        h.expect_sealed_error(r, &mut next, ErrorCode::DecryptFailed);
        assert!(h.closed.contains(&r), "{workers} workers");
    }
}

#[test]
fn a_clear_session_cannot_resume_on_a_listener_that_requires_encryption() {
    let mut c = config("");
    c.listeners.push(c.listeners[0].clone());
    c.listeners[4].bind = "127.0.0.1:7004".parse().unwrap();
    c.listeners[4].encryption = Encryption::Required;
    let mut h = Harness::with_config(c, 1);
    let a = h.connect(Codec::Protobuf);
    let login = h.login(a, "alice");
    h.drop_conn(a);
    // Listener 4 (protobuf, required).
    let id = ConnId::new(Transport::ALL[0], 99);
    h.codec.insert(id, Codec::Protobuf);
    h.worker_of.insert(id, 0);
    let now = h.now;
    h.cores[0].handle_connect(now, id, 4, SocketAddr::from(([127, 0, 0, 1], 5000)));
    h.flush();
    let req = ResumeRequest { resume_token: login.resume_token.clone(), ..Default::default() };
    h.send_msg(id, cmd::RESUME, 5, &req);
    h.expect_error(id, ErrorCode::EncryptionRequired);
    // On its own listener it resumes.
    let b = h.connect(Codec::Protobuf);
    h.send_msg(b, cmd::RESUME, 5, &req);
    let frames = h.take(b);
    assert_eq!((frames[0].cmd, frames[0].flags), (cmd::RESUME, flags::RESPONSE), "{frames:?}");
}
