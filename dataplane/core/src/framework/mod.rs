//! Framework commands, handled inside the gateway and never seen by game
//! servers: LOGIN, LOGOUT, HEARTBEAT, JOIN/LEAVE GROUP, SEND_TO_USER(S),
//! SEND_TO_GROUP, ACK, RESUME. Clients may not send gateway-to-client
//! commands (KICK, ERROR).
//!
//! Every request is answered — a response with the request's `seq`, or an
//! ERROR frame — except ACK.

mod login;
mod resume;

use portcullis_proto::framework::Payload;
use portcullis_proto::pb::client::{ErrorCode, GroupRequest, SendToGroup, SendToUser, SendToUsers};
use portcullis_proto::{cmd, flags, Codec, Envelope};

use crate::conn::ConnId;
use crate::gateway::{End, Gateway, SendRequest};
use crate::security::{Reason, Verdict};
use crate::session::SessionId;
use crate::shard::DeliveryMsg;

impl Gateway {
    /// Handles a framework command. Returns whether the connection is still open.
    #[must_use]
    pub(crate) fn on_framework(&mut self, conn: ConnId, session: SessionId, codec: Codec, env: &Envelope<'_>) -> bool {
        match env.cmd {
            cmd::HEARTBEAT => self.send_raw(conn, &Envelope::new(env.cmd, env.seq, flags::RESPONSE, &[])),
            cmd::LOGIN => return self.login(conn, session, codec, env),
            cmd::RESUME => return self.resume(conn, session, codec, env),
            cmd::LOGOUT => {
                self.send_raw(conn, &Envelope::new(env.cmd, env.seq, flags::RESPONSE, &[]));
                self.close(conn, End::Session);
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
                    if self.sessions.leave(session, &req.group) {
                        self.shared.group_member(&req.group, self.worker, false);
                    }
                } else {
                    match self.sessions.join(session, &req.group, self.limits.max_groups) {
                        Ok(true) => self.shared.group_member(&req.group, self.worker, true),
                        Ok(false) => {}
                        Err(e) => {
                            self.stats.drop_bad_payload += 1;
                            self.send_error(conn, env.cmd, env.seq, ErrorCode::BadPayload, &e.to_string());
                            return true;
                        }
                    }
                }
                self.answer(conn, &mut Envelope::new(env.cmd, env.seq, flags::RESPONSE, &[]));
            }
            cmd::SEND_TO_USER | cmd::SEND_TO_USERS => {
                let (users, payload) = if env.cmd == cmd::SEND_TO_USER {
                    let Some(req) = self.payload::<SendToUser>(conn, codec, env) else {
                        return self.count_bad_frame(conn);
                    };
                    (vec![req.user_id], req.payload)
                } else {
                    let Some(req) = self.payload::<SendToUsers>(conn, codec, env) else {
                        return self.count_bad_frame(conn);
                    };
                    if req.user_ids.len() > self.limits.max_recipients {
                        let detail = format!("more than {} recipients", self.limits.max_recipients);
                        let refusal = Verdict::Respond(Reason::BadPayload);
                        self.apply_verdict(conn, (env.cmd, env.seq), refusal, Some(&detail));
                        return self.count_bad_frame(conn);
                    }
                    (req.user_ids, req.payload)
                };
                let msg = self.delivery(session, env.cmd, String::new(), payload);
                let mut targets: Vec<(usize, SessionId)> = Vec::new();
                for user in &users {
                    if let Verdict::Drop(reason) = self.check_pair(&msg.from_user_id, user) {
                        reason.count(&mut self.stats);
                        continue;
                    }
                    targets.extend(self.shared.sessions_of(user).iter().map(|s| (s.worker, s.session)));
                }
                targets.sort_unstable();
                targets.dedup();
                let request = SendRequest { conn, session, cmd: env.cmd, seq: env.seq };
                self.deliver_anywhere(request, &targets, msg);
            }
            cmd::SEND_TO_GROUP => {
                let Some(req) = self.payload::<SendToGroup>(conn, codec, env) else {
                    return self.count_bad_frame(conn);
                };
                let exclude = if req.include_self { 0 } else { session };
                let msg = self.delivery(session, env.cmd, req.group, req.payload);
                let request = SendRequest { conn, session, cmd: env.cmd, seq: env.seq };
                self.deliver_to_group(request, exclude, msg);
            }
            // The envelope's `ack` field has been applied already.
            cmd::ACK => {}
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

    fn delivery(&self, session: SessionId, cmd: u32, group: String, payload: Vec<u8>) -> DeliveryMsg {
        let from = self.sessions.get(session).and_then(|s| s.user_id()).unwrap_or_default().to_string();
        DeliveryMsg { cmd, from_user_id: from, group, payload }
    }

    /// Decodes a framework payload, answering BAD_PAYLOAD if it cannot be.
    pub(crate) fn payload<M: Payload>(&mut self, conn: ConnId, codec: Codec, env: &Envelope<'_>) -> Option<M> {
        match codec.payload_form().decode::<M>(&env.payload) {
            Ok(m) => Some(m),
            Err(e) => {
                let detail = format_args!("bad {} payload: {e}", cmd::name(env.cmd).unwrap_or("?"));
                self.apply_verdict(conn, (env.cmd, env.seq), Verdict::Respond(Reason::BadPayload), Some(&detail));
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
        self.apply_verdict(conn, (env.cmd, env.seq), Verdict::Respond(Reason::BadPayload), Some(&problem));
        false
    }
}
