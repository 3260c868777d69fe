//! RESUME: a client whose connection dropped presents its resume token on a
//! new connection (on any worker) and gets its session back — user,
//! groups, sticky servers — with every unacknowledged message replayed in
//! order.

use std::time::Duration;

use portcullis_proto::pb::client::{ErrorCode, ResumeReply, ResumeRequest};
use portcullis_proto::token::{resume_token, verify_resume_token};
use portcullis_proto::{cmd, flags, Codec, Envelope};

use portcullis_proto::crypto::{resume_nonce, RESUME_NONCE_LEN};

use crate::config::Encryption;
use crate::conn::ConnId;
use crate::gateway::crypto::encode_frame;
use crate::gateway::{End, Gateway, Waiting};
use crate::security::{Reason, Verdict};
use crate::session::{Session, SessionId};
use crate::shard::CrossMsg;

/// How long a connection waits for another worker to hand its session over.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(5);

impl Gateway {
    pub(super) fn resume(&mut self, conn: ConnId, session: SessionId, codec: Codec, env: &Envelope<'_>) -> bool {
        if self.sessions.get(session).is_some_and(|s| s.user.is_some())
            || self.conns.get(&conn).is_some_and(|c| c.waiting != Waiting::Nothing)
        {
            self.send_error(conn, env.cmd, env.seq, ErrorCode::ResumeFailed, "this connection already has a session");
            return true;
        }
        let Some(req) = self.payload::<ResumeRequest>(conn, codec, env) else {
            return self.count_bad_frame(conn);
        };
        if !req.client_nonce.is_empty() && req.client_nonce.len() != RESUME_NONCE_LEN {
            let detail = format_args!("client_nonce must be {RESUME_NONCE_LEN} bytes");
            self.apply_verdict(conn, (env.cmd, env.seq), Verdict::Respond(Reason::BadPayload), Some(&detail));
            return self.count_bad_frame(conn);
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.handshake = req.client_nonce.as_slice().try_into().ok().map(Box::new);
        }

        let Some((target, generation)) = verify_resume_token(self.shared.resume_key(), &req.resume_token) else {
            self.resume_refused(conn, env.seq, "invalid resume token");
            return self.count_bad_frame(conn);
        };
        let owner = self.shared.owner_of(target);
        if owner == self.worker || owner >= self.shared.workers() {
            match self.release_for_resume(target, generation, req.last_server_seq, codec) {
                Ok(s) => self.complete_resume(conn, env.seq, s),
                Err(reason) => self.resume_refused(conn, env.seq, &reason),
            }
            return true;
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.waiting = Waiting::Resume(self.now + HANDOVER_TIMEOUT);
        }
        let msg = CrossMsg::ResumeRequest {
            session: target,
            generation,
            last_seq: req.last_server_seq,
            codec,
            reply_to: (self.worker, conn),
            seq: env.seq,
        };
        if self.send_cross(owner, msg).is_some() {
            self.resume_refused(conn, env.seq, "the gateway is overloaded; try again");
        }
        true
    }

    /// Detaches a session of this worker for a RESUME with the token of
    /// `generation`: closes a connection it may still have, drops what the
    /// client acknowledged, and removes it from this worker.
    pub(crate) fn release_for_resume(
        &mut self,
        session: SessionId,
        generation: u32,
        last_seq: u64,
        codec: Codec,
    ) -> Result<Session, String> {
        let gone = "the session has ended (logged out, replaced, or not resumed in time)";
        let s = self.sessions.get(session).filter(|s| s.user.is_some()).ok_or(gone)?;
        if s.resume_generation != generation {
            self.stats.drop_resume_token_reused += 1;
            return Err("resume token already used or superseded: each token resumes once".into());
        }
        if s.codec != codec {
            return Err(format!("resume on a {} listener, like the original connection", s.codec));
        }
        if let Some(old) = s.conn {
            // The client came back before we noticed its old connection die.
            self.send_kick(old, "resumed on another connection", false);
            self.close(old, End::Detach);
        }
        let mut s = self.take_session(session).ok_or(gone)?;
        s.replay.ack(last_seq.min(s.replay.last_seq()));
        s.conn = None;
        Ok(s)
    }

    /// Installs a resumed session on the waiting connection, answers, and
    /// replays every unacknowledged message.
    pub(crate) fn complete_resume(&mut self, conn: ConnId, seq: u32, mut s: Session) {
        let Some(c) = self.conns.get_mut(&conn).filter(|c| !c.closing) else {
            // The client gave up meanwhile: the session waits for another try.
            return self.adopt_detached(s);
        };
        let client_nonce = c.handshake.take();
        let (mode, _) = self.encryption_of(conn);
        // An encrypted session stays encrypted, with keys from fresh nonces;
        // a clear one cannot resume where encryption is required.
        let keys = match (&s.crypto, client_nonce) {
            (Some(_), None) => {
                self.adopt_detached(s);
                return self.resume_refused(conn, seq, "this session is encrypted: send client_nonce in RESUME");
            }
            (None, _) if mode == Encryption::Required => {
                self.adopt_detached(s);
                self.resume_refused_with(
                    conn,
                    seq,
                    ErrorCode::EncryptionRequired,
                    "this listener requires encryption and the session is not encrypted: log in",
                );
                return;
            }
            (None, _) => None,
            (Some(crypto), Some(client_nonce)) => match resume_nonce() {
                Ok(server_nonce) => {
                    let keys = crypto.secret.connection_keys(crypto.cipher, &client_nonce[..], &server_nonce);
                    Some((server_nonce, keys))
                }
                Err(e) => {
                    self.adopt_detached(s);
                    return self.resume_refused(conn, seq, &format!("the gateway cannot draw a nonce: {e}"));
                }
            },
        };
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.waiting = Waiting::Nothing;
        let anonymous = std::mem::replace(&mut c.session, s.id);
        self.end_session(anonymous);
        s.conn = Some(conn);
        s.detached_at = None;
        s.last_seen = self.now;
        // The token just presented is spent; the client gets the next one.
        s.resume_generation = s.resume_generation.wrapping_add(1);
        let user = s.user.clone().expect("resumable sessions are logged in");
        let reply = ResumeReply {
            session_id: s.id,
            user_id: user.user_id.to_string(),
            device: user.device.to_string(),
            heartbeat_interval_ms: (self.limits.heartbeat_timeout.as_millis() / 3) as u32,
            replayed: s.replay.len() as u32,
            resume_token: resume_token(self.shared.resume_key(), s.id, s.resume_generation),
            server_nonce: keys.as_ref().map(|(n, _)| n.to_vec()).unwrap_or_default(),
            cipher: s.crypto.as_ref().map(|c| c.cipher.name().to_string()).unwrap_or_default(),
        };
        self.notify_links(&s, false);
        let id = s.id;
        self.install(s, true);
        self.logged_in(conn);
        self.send_payload(conn, Envelope::new(cmd::RESUME, seq, flags::RESPONSE, &[]), &reply, false);
        let Some(s) = self.sessions.get(id) else { return };
        if let Some(c) = self.conns.get_mut(&conn) {
            match keys {
                None => c.out.extend_from_slice(s.replay.frames()),
                // The replay buffer holds clear frames: seal each again
                // with the new connection's keys.
                Some((_, keys)) => {
                    let keys = c.keys.insert(Box::new(keys));
                    let framing = c.codec.framing();
                    for frame in s.replay.iter() {
                        let env = framing
                            .next_frame(frame, usize::MAX)
                            .ok()
                            .flatten()
                            .and_then(|(range, _)| c.codec.decode(&frame[range]).ok());
                        match env {
                            Some(env) => encode_frame(c.codec, Some(&mut **keys), &env, &mut c.out, &mut self.sealing),
                            None => debug_assert!(false, "the replay buffer holds frames the gateway encoded"),
                        }
                    }
                }
            }
        }
        self.account(conn);
        self.stats.resumes += 1;
        self.stats.replayed += u64::from(reply.replayed);
        self.handle_writable(conn);
        self.score_conn(conn, crate::security::behaviour::Event::Resume);
    }

    /// Keeps a session that no connection is waiting for, detached.
    pub(crate) fn adopt_detached(&mut self, mut s: Session) {
        s.conn = None;
        s.detached_at = Some(self.now);
        self.install(s, false);
    }

    /// Puts a session (back) on this worker and in the shared indexes.
    fn install(&mut self, s: Session, connected: bool) {
        for g in &s.groups {
            self.shared.group_member(g, self.worker, true);
        }
        self.shared.session_moved(s.id, self.worker);
        if let Some(user) = s.user_id() {
            self.shared.set_user_session(user, s.id, self.worker, connected);
        }
        self.sessions.insert(s);
    }

    /// Refuses a RESUME.
    pub(crate) fn resume_refused(&mut self, conn: ConnId, seq: u32, reason: &str) {
        self.resume_refused_with(conn, seq, ErrorCode::ResumeFailed, reason);
    }

    /// Refuses a RESUME with an error code.
    fn resume_refused_with(&mut self, conn: ConnId, seq: u32, code: ErrorCode, reason: &str) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.waiting = Waiting::Nothing;
            c.handshake = None;
        }
        self.stats.drop_resume_failed += 1;
        self.send_error(conn, cmd::RESUME, seq, code, reason);
    }
}
