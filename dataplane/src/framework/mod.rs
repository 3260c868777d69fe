//! Framework commands, handled inside the gateway and never seen by game
//! servers: LOGIN, LOGOUT, HEARTBEAT, JOIN/LEAVE GROUP, SEND_TO_USER(S),
//! SEND_TO_GROUP, ACK. Clients may not send gateway-to-client commands
//! (KICK, ERROR). RESUME arrives with session resume.
//!
//! Every request is answered: a response with the request's `seq`, or an
//! ERROR frame.

use std::time::Instant;

use portcullis_proto::framework::Payload;
use portcullis_proto::pb::client::{
    Delivery, ErrorCode, GroupRequest, LoginReply, LoginRequest, SendResult, SendToGroup, SendToUser, SendToUsers,
};
use portcullis_proto::{cmd, flags, Codec, Envelope};

use crate::core::Gateway;
use crate::session::{ConnId, SessionId};

impl Gateway {
    /// Handles a framework command. Returns whether the connection is still open.
    pub(crate) fn on_framework(
        &mut self,
        now: Instant,
        conn: ConnId,
        session: SessionId,
        codec: Codec,
        env: &Envelope<'_>,
    ) -> bool {
        let logged_in = self.sessions.get(session).is_some_and(|s| s.user.is_some());
        let needs_login = !matches!(env.cmd, cmd::HEARTBEAT | cmd::LOGIN | cmd::LOGOUT);
        if needs_login && !logged_in {
            self.stats.drop_not_logged_in += 1;
            self.send_error(conn, env.cmd, env.seq, ErrorCode::NotLoggedIn, "log in first");
            return true;
        }
        match env.cmd {
            cmd::HEARTBEAT => self.respond(conn, env, &[]),
            cmd::LOGIN => return self.login(now, conn, session, codec, env),
            cmd::LOGOUT => {
                self.respond(conn, env, &[]);
                self.close(conn);
                return false;
            }
            cmd::JOIN_GROUP | cmd::LEAVE_GROUP => {
                let Some(req) = self.payload::<GroupRequest>(conn, codec, env) else {
                    return self.count_bad_frame(conn);
                };
                if !self.valid_name(conn, env, "group", &req.group) {
                    return self.count_bad_frame(conn);
                }
                if env.cmd == cmd::LEAVE_GROUP {
                    self.sessions.leave(session, &req.group);
                } else if let Err(e) = self.sessions.join(session, &req.group, self.limits.max_groups) {
                    self.stats.drop_bad_payload += 1;
                    self.send_error(conn, env.cmd, env.seq, ErrorCode::BadPayload, &e.to_string());
                    return true;
                }
                self.respond(conn, env, &[]);
            }
            cmd::SEND_TO_USER => {
                let Some(req) = self.payload::<SendToUser>(conn, codec, env) else {
                    return self.count_bad_frame(conn);
                };
                let mut targets = self.take_targets();
                targets.extend(self.sessions.conns_of(self.sessions.of_user(&req.user_id).iter().copied()));
                self.deliver(conn, session, env, targets, "", &req.payload);
            }
            cmd::SEND_TO_USERS => {
                let Some(req) = self.payload::<SendToUsers>(conn, codec, env) else {
                    return self.count_bad_frame(conn);
                };
                let mut targets = self.take_targets();
                for user in &req.user_ids {
                    targets.extend(self.sessions.conns_of(self.sessions.of_user(user).iter().copied()));
                }
                targets.sort_unstable();
                targets.dedup();
                self.deliver(conn, session, env, targets, "", &req.payload);
            }
            cmd::SEND_TO_GROUP => {
                let Some(req) = self.payload::<SendToGroup>(conn, codec, env) else {
                    return self.count_bad_frame(conn);
                };
                let mut targets = self.take_targets();
                targets.extend(self.sessions.conns_of(self.sessions.members(&req.group)));
                if !req.include_self {
                    targets.retain(|c| *c != conn);
                }
                self.deliver(conn, session, env, targets, &req.group, &req.payload);
            }
            // Acknowledgements matter once sessions keep a replay buffer.
            cmd::ACK => {}
            cmd::RESUME => {
                self.stats.drop_unknown_command += 1;
                let msg = "RESUME is not enabled on this gateway";
                self.send_error(conn, env.cmd, env.seq, ErrorCode::UnknownCommand, msg);
            }
            other => {
                self.stats.drop_unknown_command += 1;
                let msg = match cmd::name(other) {
                    Some(name) => format!("{name} is sent by the gateway, not by clients"),
                    None => format!("unknown framework command {other}"),
                };
                self.send_error(conn, env.cmd, env.seq, ErrorCode::UnknownCommand, &msg);
                return self.count_bad_frame(conn);
            }
        }
        true
    }

    fn login(&mut self, now: Instant, conn: ConnId, session: SessionId, codec: Codec, env: &Envelope<'_>) -> bool {
        if self.sessions.get(session).is_some_and(|s| s.user.is_some()) {
            self.send_error(conn, env.cmd, env.seq, ErrorCode::AlreadyLoggedIn, "this session is already logged in");
            return true;
        }
        let Some(req) = self.payload::<LoginRequest>(conn, codec, env) else {
            return self.count_bad_frame(conn);
        };
        let user = match self.auth.authenticate(&req, self.unix_time(now)) {
            Ok(user) if user.user_id.len() <= self.limits.max_name => user,
            Ok(_) => {
                self.stats.drop_auth_failed += 1;
                self.send_error(conn, env.cmd, env.seq, ErrorCode::AuthFailed, "user id too long");
                return self.count_bad_frame(conn);
            }
            Err(e) => {
                self.stats.drop_auth_failed += 1;
                self.send_error(conn, env.cmd, env.seq, ErrorCode::AuthFailed, &e.to_string());
                return self.count_bad_frame(conn);
            }
        };
        let reply = LoginReply {
            session_id: session,
            user_id: user.user_id.to_string(),
            device: user.device.to_string(),
            heartbeat_interval_ms: (self.limits.heartbeat_timeout.as_millis() / 3) as u32,
        };
        self.sessions.bind_user(session, user);
        self.stats.logins += 1;
        self.send_payload(conn, env.cmd, env.seq, flags::RESPONSE, &reply);
        true
    }

    /// Pushes a SEND_TO_* message to `targets` and answers the sender with
    /// the number of sessions reached.
    fn deliver(
        &mut self,
        conn: ConnId,
        session: SessionId,
        env: &Envelope<'_>,
        targets: Vec<ConnId>,
        group: &str,
        payload: &[u8],
    ) {
        let from = self.sessions.get(session).and_then(|s| s.user.as_ref()).map(|u| u.user_id.to_string());
        let delivery =
            Delivery { from_user_id: from.unwrap_or_default(), group: group.to_string(), payload: payload.to_vec() };
        let push_cmd = env.cmd;
        let delivered = self.fan_out(targets, |codec, out| {
            let body = codec.payload_form().encode_to_vec(&delivery);
            codec.encode(&Envelope::new(push_cmd, 0, flags::PUSH, &body), out);
        });
        self.send_payload(conn, env.cmd, env.seq, flags::RESPONSE, &SendResult { delivered: delivered as u32 });
    }

    /// Answers a request with an empty or raw payload.
    fn respond(&mut self, conn: ConnId, env: &Envelope<'_>, payload: &[u8]) {
        self.send(conn, &Envelope::new(env.cmd, env.seq, flags::RESPONSE, payload));
    }

    /// Decodes a framework payload, answering BAD_PAYLOAD if it cannot be.
    fn payload<M: Payload>(&mut self, conn: ConnId, codec: Codec, env: &Envelope<'_>) -> Option<M> {
        match codec.payload_form().decode::<M>(&env.payload) {
            Ok(m) => Some(m),
            Err(e) => {
                self.stats.drop_bad_payload += 1;
                let name = cmd::name(env.cmd).unwrap_or("?");
                self.send_error(conn, env.cmd, env.seq, ErrorCode::BadPayload, &format!("bad {name} payload: {e}"));
                None
            }
        }
    }

    /// Checks a client-chosen name, answering BAD_PAYLOAD if it is unusable.
    fn valid_name(&mut self, conn: ConnId, env: &Envelope<'_>, what: &str, name: &str) -> bool {
        let max = self.limits.max_name;
        let problem = if name.is_empty() {
            format!("{what} name is empty")
        } else if name.len() > max {
            format!("{what} name is longer than {max} bytes")
        } else {
            return true;
        };
        self.stats.drop_bad_payload += 1;
        self.send_error(conn, env.cmd, env.seq, ErrorCode::BadPayload, &problem);
        false
    }
}
