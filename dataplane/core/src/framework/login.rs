//! LOGIN: authenticate (at once or through an auth service), apply the
//! multi-login policy across all workers, bind the user.

use portcullis_proto::pb::client::{ErrorCode, LoginReply, LoginRequest};
use portcullis_proto::token::resume_token;
use portcullis_proto::{cmd, flags, Codec, Envelope};
use prost::Message;

use portcullis_proto::crypto::KEY_LEN;

use crate::auth::AuthStart;
use crate::backend::Pending;
use crate::config::Encryption;
use crate::conn::ConnId;
use crate::gateway::crypto::handshake;
use crate::gateway::{Gateway, Waiting};
use crate::route::PickKey;
use crate::security::behaviour::Event;
use crate::security::{Reason, Verdict};
use crate::session::policy::Decision;
use crate::session::{SessionId, UserBinding};
use crate::shard::CrossMsg;

impl Gateway {
    pub(super) fn login(&mut self, conn: ConnId, session: SessionId, codec: Codec, env: &Envelope<'_>) -> bool {
        if self.sessions.get(session).is_some_and(|s| s.user.is_some()) {
            self.send_error(conn, env.cmd, env.seq, ErrorCode::AlreadyLoggedIn, "this session is already logged in");
            return true;
        }
        if self.conns.get(&conn).is_some_and(|c| c.waiting != Waiting::Nothing) {
            self.send_error(conn, env.cmd, env.seq, ErrorCode::AlreadyLoggedIn, "a LOGIN or RESUME is in progress");
            return true;
        }
        let Some(req) = self.payload::<LoginRequest>(conn, codec, env) else {
            return self.count_bad_frame(conn);
        };
        if !self.offer_key(conn, env, &req.client_key) {
            return self.takes_input(conn);
        }
        match self.auth.authenticate(&req, self.unix_time(self.now)) {
            AuthStart::Done(Ok(user)) => self.finish_login(conn, env.seq, user),
            AuthStart::Done(Err(e)) => return self.login_failed(conn, env.seq, &e.to_string()),
            AuthStart::Delegate { service, timeout } => {
                let links = &self.links;
                let max = self.limits.max_link_outbound;
                let key = PickKey { user_id: "", route_key: None };
                let link = self.router.service_named(&service).and_then(|i| {
                    self.router.service_mut(i).pick(key, |l| links[l].accepts(max), |l| links[l].inflight.len())
                });
                let Some(link) = link else {
                    return self.login_failed(conn, env.seq, "the authentication service is unavailable");
                };
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.waiting = Waiting::Login;
                }
                // Auth services always get the request in protobuf.
                let body = req.encode_to_vec();
                let deadline = self.now + timeout;
                self.forward(link, session, cmd::LOGIN, env.seq, &body, None, deadline, Pending::Login(conn));
            }
        }
        true
    }

    /// The auth service answered a delegated login.
    pub(crate) fn delegated_login_answered(
        &mut self,
        conn: ConnId,
        seq: u32,
        payload: &[u8],
        error: u32,
        message: &str,
    ) {
        if !self.conns.get(&conn).is_some_and(|c| c.waiting == Waiting::Login) {
            return;
        }
        if error != 0 {
            self.login_failed(conn, seq, &format!("refused by the authentication service: {message}"));
            return;
        }
        match self.auth.complete(payload) {
            Ok(user) => self.finish_login(conn, seq, user),
            Err(e) => {
                self.login_failed(conn, seq, &e.to_string());
            }
        }
    }

    /// Checks the key a LOGIN offers against the listener's `encryption`
    /// and keeps it for the answer. False (answered) if the LOGIN is refused.
    fn offer_key(&mut self, conn: ConnId, env: &Envelope<'_>, client_key: &[u8]) -> bool {
        let (mode, _) = self.encryption_of(conn);
        if !client_key.is_empty() && client_key.len() != KEY_LEN {
            let detail = format_args!("client_key must be {KEY_LEN} bytes (an X25519 public key)");
            self.apply_verdict(conn, (env.cmd, env.seq), Verdict::Respond(Reason::BadPayload), Some(&detail));
            return false;
        }
        if client_key.is_empty() && mode == Encryption::Required {
            let detail = "this listener requires encryption: send client_key in LOGIN";
            self.apply_verdict(conn, (env.cmd, env.seq), Verdict::Respond(Reason::NotEncrypted), Some(&detail));
            return false;
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.handshake = if mode == Encryption::Off { None } else { client_key.try_into().ok().map(Box::new) };
        }
        true
    }

    /// Refuses a login with AUTH_FAILED. Returns whether the connection is
    /// still open.
    pub(crate) fn login_failed(&mut self, conn: ConnId, seq: u32, message: &str) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else { return false };
        c.waiting = Waiting::Nothing;
        self.stats.drop_auth_failed += 1;
        self.send_error(conn, cmd::LOGIN, seq, ErrorCode::AuthFailed, message);
        self.score_conn(conn, Event::FailedLogin);
        self.count_bad_frame(conn) && self.takes_input(conn)
    }

    /// Binds an authenticated user under the multi-login policy and answers.
    fn finish_login(&mut self, conn: ConnId, seq: u32, user: UserBinding) {
        let Some(c) = self.conns.get_mut(&conn).filter(|c| !c.closing) else { return };
        c.waiting = Waiting::Nothing;
        let session = c.session;
        if self.sessions.get(session).is_none_or(|s| s.user.is_some()) {
            return;
        }
        if user.user_id.len() > self.limits.max_name {
            self.login_failed(conn, seq, "user id too long");
            return;
        }
        let client_key = self.conns.get_mut(&conn).and_then(|c| c.handshake.take());
        let (_, cipher) = self.encryption_of(conn);
        let handshake = match client_key.map(|key| handshake(&key[..], cipher)).transpose() {
            Ok(h) => h,
            Err(e) => {
                self.login_failed(conn, seq, &format!("client_key: {e}"));
                return;
            }
        };
        match self.shared.login(&self.policy, &user.user_id, &user.device, self.worker, session) {
            Decision::Reject(why) => {
                self.stats.drop_login_conflict += 1;
                self.send_error(conn, cmd::LOGIN, seq, ErrorCode::LoginConflict, &why);
                return;
            }
            Decision::Accept { replace } => {
                let reason = format!("logged in again on a {} device", user.device);
                for old in replace {
                    if old.worker == self.worker {
                        self.stats.sessions_replaced += 1;
                        self.kick_session(old.session, &reason);
                    } else {
                        self.send_cross(old.worker, CrossMsg::Kick { session: old.session, reason: reason.clone() });
                    }
                }
            }
        }
        let reply = LoginReply {
            session_id: session,
            user_id: user.user_id.to_string(),
            device: user.device.to_string(),
            heartbeat_interval_ms: (self.limits.heartbeat_timeout.as_millis() / 3) as u32,
            resume_token: resume_token(self.shared.resume_key(), session, 0),
            resume_window_ms: self.limits.resume_window.as_millis() as u32,
            server_key: handshake.as_ref().map(|h| h.server_key.to_vec()).unwrap_or_default(),
            cipher: handshake.as_ref().map(|h| h.session.cipher.name().to_string()).unwrap_or_default(),
        };
        let ip = self.conns.get(&conn).map(|c| c.ip.to_string()).unwrap_or_default();
        self.event(crate::admin::EventKind::Login, session, &user.user_id, &ip, &user.device);
        let role_bits = self.security.whitelist.role_bits(&user.role);
        self.sessions.bind_user(session, user);
        if let Some(s) = self.sessions.get_mut(session) {
            s.logged_in_at = Some(self.now);
            s.role_bits = role_bits;
        }
        self.logged_in(conn);
        self.stats.logins += 1;
        self.send_payload(conn, Envelope::new(cmd::LOGIN, seq, flags::RESPONSE, &[]), &reply, false);
        // Everything after the answer, both ways, is sealed.
        if let Some(h) = handshake {
            self.stats.encrypted_logins += 1;
            if let Some(s) = self.sessions.get_mut(session) {
                s.crypto = Some(Box::new(h.session));
            }
            if let Some(c) = self.conns.get_mut(&conn) {
                c.keys = Some(Box::new(h.keys));
            }
        }
        self.score_conn(conn, Event::Login);
    }
}
