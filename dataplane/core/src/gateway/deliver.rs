//! Sending to clients. Every message to a logged-in session is sequenced
//! (`server_seq`) and kept in its replay buffer until acknowledged, whether
//! or not its connection is up; heartbeat answers, KICK and the LOGIN and
//! RESUME answers are not.

use portcullis_proto::framework::{Payload, PayloadForm};
use portcullis_proto::link;
use portcullis_proto::pb::client::{Delivery, ErrorCode, Kick};
use portcullis_proto::pb::link::{link_frame, SessionClosed, SessionResumed};
use portcullis_proto::{cmd, flags, Envelope};

use super::{End, Gateway};
use crate::backend::{LinkState, MAX_CLOSED_WHILE_DOWN};
use crate::conn::ConnId;
use crate::security::Verdict;
use crate::session::{Session, SessionId};
use crate::shard::DeliveryMsg;

impl Gateway {
    /// Encodes an envelope onto a connection, unsequenced.
    pub(crate) fn send_raw(&mut self, conn: ConnId, env: &Envelope<'_>) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if c.closing {
            return;
        }
        c.codec.encode(env, &mut c.out);
        self.after_append(conn);
    }

    /// Answers on a connection: sequenced if its session is logged in.
    pub(crate) fn answer(&mut self, conn: ConnId, env: &mut Envelope<'_>) {
        let Some(session) = self.conns.get(&conn).map(|c| c.session) else { return };
        if self.sessions.get(session).is_some_and(|s| s.user.is_some() && s.conn == Some(conn)) {
            self.deliver(session, env);
        } else {
            self.send_raw(conn, env);
        }
    }

    /// Sends to a logged-in session: numbers the message, keeps it for
    /// replay and writes it to the connection if there is one. A session
    /// whose replay buffer overflows is ended. Returns whether it was queued.
    pub(crate) fn deliver(&mut self, session: SessionId, env: &mut Envelope<'_>) -> bool {
        self.deliver_as(session, env, false)
    }

    /// Like [`Gateway::deliver`]; a `peer` message (SEND_TO_*, from another
    /// player) is refused for a session whose replay buffer is half full,
    /// so that no player can end another's session by flooding it.
    pub(crate) fn deliver_as(&mut self, session: SessionId, env: &mut Envelope<'_>, peer: bool) -> bool {
        if peer {
            let Some(s) = self.sessions.get(session) else { return false };
            if let Verdict::Drop(reason) = self.check_peer_delivery(s, env.payload.len()) {
                reason.count(&mut self.stats);
                return false;
            }
        }
        let Some(s) = self.sessions.get_mut(session) else { return false };
        if s.user.is_none() {
            return match s.conn {
                Some(conn) => {
                    self.send_raw(conn, env);
                    true
                }
                None => false,
            };
        }
        let seq = s.replay.next_seq();
        env.server_seq = seq;
        let (codec, conn) = (s.codec, s.conn);
        let conns = &mut self.conns;
        let written =
            s.replay.push(seq, self.limits.replay_messages, self.limits.replay_bytes, |out| codec.encode(env, out));
        match written {
            Ok(frame) => {
                if let Some(c) = conn.and_then(|c| conns.get_mut(&c)).filter(|c| !c.closing) {
                    c.out.extend_from_slice(frame);
                    self.after_append(conn.expect("has a connection"));
                }
                true
            }
            Err(e) => {
                self.stats.replay_overflows += 1;
                let reason = format!("replay buffer overflow ({e}): acknowledge messages with ACK");
                self.kick_session(session, &reason);
                false
            }
        }
    }

    /// Queues a transmit, or disconnects a client whose unsent output passed
    /// the high-water mark (its session waits for a RESUME).
    fn after_append(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        self.stats.frames_out += 1;
        if c.out.len() > self.limits.max_outbound {
            self.stats.slow_consumers += 1;
            // Nothing more can reach a client that does not read: drop its
            // backlog (the replay buffer keeps what matters) and close.
            c.out.clear();
            return self.close(conn, End::Detach);
        }
        self.queue_transmit(conn);
    }

    /// Sends a framework payload message in the connection's payload form.
    pub(crate) fn send_payload<M: Payload>(&mut self, conn: ConnId, env: Envelope<'_>, msg: &M, sequenced: bool) {
        let Some(c) = self.conns.get(&conn) else { return };
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        c.codec.payload_form().encode(msg, &mut buf);
        let mut env = Envelope::new(env.cmd, env.seq, env.flags, &buf);
        if sequenced {
            self.answer(conn, &mut env);
        } else {
            self.send_raw(conn, &env);
        }
        self.scratch = buf;
    }

    /// Sends an ERROR frame answering `(cmd, seq)`.
    pub(crate) fn send_error(&mut self, conn: ConnId, cmd: u32, seq: u32, code: ErrorCode, message: &str) {
        let err = portcullis_proto::pb::client::Error { code: code as i32, message: message.into(), cmd };
        self.send_payload(conn, Envelope::new(cmd::ERROR, seq, flags::RESPONSE, &[]), &err, true);
    }

    /// Sends a KICK notification.
    pub(crate) fn send_kick(&mut self, conn: ConnId, reason: &str, reconnect: bool) {
        let kick = Kick { reason: reason.into(), reconnect };
        self.send_payload(conn, Envelope::new(cmd::KICK, 0, flags::PUSH, &[]), &kick, false);
    }

    /// Sends a KICK, then closes the connection and ends its session.
    pub(crate) fn kick(&mut self, conn: ConnId, reason: &str, reconnect: bool) {
        self.send_kick(conn, reason, reconnect);
        self.close(conn, End::Session);
    }

    /// Ends a session of this worker with a KICK if it is connected.
    pub(crate) fn kick_session(&mut self, session: SessionId, reason: &str) {
        match self.sessions.get(session).map(|s| s.conn) {
            Some(Some(conn)) => self.kick(conn, reason, false),
            Some(None) => self.end_session(session),
            None => {}
        }
    }

    /// Pushes a business message to local sessions; returns how many took it.
    pub(crate) fn push_to(&mut self, targets: &[SessionId], cmd: u32, payload: &[u8]) -> usize {
        let mut n = 0;
        for &sid in targets {
            if self.deliver(sid, &mut Envelope::new(cmd, 0, flags::PUSH, payload)) {
                n += 1;
            }
        }
        self.stats.pushes += n as u64;
        n
    }

    /// Delivers a SEND_TO_* message to local sessions, encoding its payload
    /// once per payload form; returns how many took it.
    pub(crate) fn deliver_to(&mut self, targets: &[SessionId], msg: &DeliveryMsg) -> usize {
        let delivery =
            Delivery { from_user_id: msg.from_user_id.clone(), group: msg.group.clone(), payload: msg.payload.clone() };
        let mut forms: [Option<Vec<u8>>; 2] = [None, None];
        let mut n = 0;
        for &sid in targets {
            let Some(form) = self.sessions.get(sid).map(|s| s.codec.payload_form()) else { continue };
            let body = forms[(form == PayloadForm::Json) as usize].get_or_insert_with(|| form.encode_to_vec(&delivery));
            if self.deliver_as(sid, &mut Envelope::new(msg.cmd, 0, flags::PUSH, body), true) {
                n += 1;
            }
        }
        self.stats.pushes += n as u64;
        n
    }

    /// Tells the game servers a session used that it ended (`closed`) or
    /// now lives on this worker.
    pub(crate) fn notify_links(&mut self, s: &Session, closed: bool) {
        if s.links_used == 0 {
            return;
        }
        let user_id = s.user_id().unwrap_or_default().to_string();
        for id in 0..self.links.len() {
            if s.links_used & (1 << (id % 64)) == 0 {
                continue;
            }
            let l = &mut self.links[id];
            if l.state != LinkState::Up {
                if closed && l.closed_while_down.len() < MAX_CLOSED_WHILE_DOWN {
                    l.closed_while_down.push((s.id, user_id.as_str().into()));
                }
                continue;
            }
            let kind = if closed {
                link_frame::Kind::SessionClosed(SessionClosed { session_id: s.id, user_id: user_id.clone() })
            } else {
                link_frame::Kind::SessionResumed(SessionResumed { session_id: s.id, user_id: user_id.clone() })
            };
            link::encode_frame(kind, &mut self.links[id].out);
            self.queue_link(id);
        }
    }
}
