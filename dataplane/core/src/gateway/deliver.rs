//! Sending to clients. Every message to a logged-in session is sequenced
//! (`server_seq`) and kept in its replay buffer until acknowledged, whether
//! or not its connection is up; heartbeat answers, KICK, ERROR and the
//! LOGIN and RESUME answers are not.
//!
//! No frame over the connection's frame limit is ever sent: an answer that
//! would be is replaced by FRAME_TOO_LARGE, a push is dropped and counted.
//! Output is bounded per connection (`max_outbound_before_login_bytes`
//! before login, `max_outbound_bytes` after) and per worker (its share of
//! `limits.max_output_memory_bytes`: past it the biggest backlogs are cut).

use portcullis_proto::framework::{Payload, PayloadForm};
use portcullis_proto::link;
use portcullis_proto::pb::client::{Delivery, ErrorCode, Kick};
use portcullis_proto::pb::link::{link_frame, SessionClosed, SessionResumed};
use portcullis_proto::{cmd, flags, Envelope};

use super::crypto::encode_frame;
use super::{Conn, End, Gateway};
use crate::backend::{LinkState, MAX_CLOSED_WHILE_DOWN};
use crate::conn::ConnId;
use crate::security::Verdict;
use crate::session::replay::{Bounds, ReplayError};
use crate::session::{Session, SessionId};
use crate::shard::DeliveryMsg;

/// Unreliable frames held for one connection before older ones are dropped.
const MAX_DATAGRAM_BACKLOG: usize = 64 * 1024;

impl Gateway {
    /// Queues an unreliable frame as a datagram, unsequenced and not kept
    /// for replay, if the session's connection takes datagrams (QUIC, not
    /// encrypted by Portcullis: its frame counter follows the stream).
    /// Returns false if it cannot: the frame then goes reliably.
    fn send_datagram(&mut self, session: SessionId, env: &Envelope<'_>) -> bool {
        let Some(conn) = self.sessions.get(session).and_then(|s| s.conn) else { return false };
        let Some(c) = self.conns.get_mut(&conn) else { return false };
        if conn.transport() != crate::conn::Transport::Quic || c.keys.is_some() || c.closing {
            return false;
        }
        // State that is useless once late: past the bound, older frames go.
        if c.datagrams.len() > MAX_DATAGRAM_BACKLOG {
            c.datagrams.clear();
            self.stats.drop_datagram += 1;
        }
        let mark = c.datagrams.len();
        c.codec.encode(env, &mut c.datagrams);
        if c.datagrams.len() - mark > c.max_frame + c.codec.framing().overhead() {
            c.datagrams.truncate(mark);
            return false;
        }
        self.stats.frames_out += 1;
        self.queue_transmit(conn);
        true
    }

    /// Encodes an envelope onto a connection, unsequenced.
    pub(crate) fn send_raw(&mut self, conn: ConnId, env: &Envelope<'_>) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if c.closing {
            return;
        }
        let mark = c.out.len();
        encode_frame(c.codec, c.keys.as_deref_mut(), env, &mut c.out, &mut self.sealing);
        let len = c.out.len() - mark;
        if len > c.max_frame + c.codec.framing().overhead() {
            c.out.truncate(mark);
            if let Some(keys) = c.keys.as_deref_mut() {
                keys.server_to_client.unseal_last();
            }
            return self.oversized(conn, env, len);
        }
        self.after_append(conn);
    }

    /// A frame for `conn` came out longer than its frame limit: an answer
    /// becomes FRAME_TOO_LARGE; anything else is dropped and counted.
    fn oversized(&mut self, conn: ConnId, env: &Envelope<'_>, len: usize) {
        self.stats.drop_frame_too_large_out += 1;
        if env.flags & flags::RESPONSE != 0 && env.cmd != cmd::ERROR {
            let max = self.conns.get(&conn).map_or(0, |c| c.max_frame);
            let len = len - self.conns.get(&conn).map_or(0, |c| c.codec.framing().overhead());
            let message = format!("the answer ({len} bytes) is longer than this listener's frame limit ({max})");
            self.send_error(conn, env.cmd, env.seq, ErrorCode::FrameTooLarge, &message);
        }
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
            if let Verdict::Drop(reason) = self.check_peer_delivery(session, env.cmd, env.payload.len()) {
                reason.count(&mut self.stats);
                return false;
            }
        }
        if env.flags & flags::UNRELIABLE != 0 && self.send_datagram(session, env) {
            return true;
        }
        env.flags &= !flags::UNRELIABLE;
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
        // A detached session's frames must fit the listener it resumes on,
        // which has its codec: the limit of the one it had is the best guess.
        let max_frame =
            conn.and_then(|c| conns.get(&c)).map_or(usize::MAX, |c| c.max_frame + codec.framing().overhead());
        let bounds =
            Bounds { max_messages: self.limits.replay_messages, max_bytes: self.limits.replay_bytes, max_frame };
        match s.replay.push(seq, bounds, |out| codec.encode(env, out)) {
            Ok(frame) => {
                if let Some(c) = conn.and_then(|c| conns.get_mut(&c)).filter(|c| !c.closing) {
                    match c.keys.as_deref_mut() {
                        // The replay buffer keeps the clear frame; the
                        // connection gets it sealed with its own keys.
                        Some(keys) => {
                            let mark = c.out.len();
                            encode_frame(codec, Some(&mut *keys), env, &mut c.out, &mut self.sealing);
                            let len = c.out.len() - mark;
                            if len > max_frame {
                                c.out.truncate(mark);
                                keys.server_to_client.unseal_last();
                                s.replay.pop_last();
                                env.server_seq = 0;
                                self.oversized(conn.expect("has a connection"), env, len);
                                return false;
                            }
                        }
                        None => c.out.extend_from_slice(frame),
                    }
                    self.after_append(conn.expect("has a connection"));
                }
                true
            }
            Err(ReplayError::TooLarge { len, .. }) => {
                env.server_seq = 0;
                self.oversized(conn.expect("only a connection has a limit"), env, len);
                false
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
    /// its limit (a logged-in session waits for a RESUME); cuts the biggest
    /// backlogs when the worker's output passed its share.
    pub(crate) fn after_append(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        account(&mut self.out_bytes, c);
        self.stats.frames_out += 1;
        let limit = if c.logged_in { self.limits.max_outbound } else { self.limits.max_outbound_before_login };
        if c.out.len() > limit {
            if c.logged_in {
                self.stats.slow_consumers += 1;
            } else {
                self.stats.drop_prelogin_output += 1;
            }
            // Nothing more can reach a client that does not read: drop its
            // backlog (the replay buffer keeps what matters) and close.
            self.cut(conn);
            return;
        }
        self.queue_transmit(conn);
        if self.out_bytes > self.limits.output_share {
            self.cut_biggest_backlogs();
        }
    }

    /// Brings the worker's output total up to date with `conn`'s buffer.
    pub(crate) fn account(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            account(&mut self.out_bytes, c);
        }
    }

    /// Drops what is queued for `conn` and closes it; a logged-in session
    /// waits for a RESUME (its replay buffer keeps what matters).
    fn cut(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.out = Vec::new();
        account(&mut self.out_bytes, c);
        let end = if c.logged_in { End::Detach } else { End::Session };
        self.close(conn, end);
    }

    /// The worker's output passed its share of
    /// `limits.max_output_memory_bytes`: the connections with the most
    /// queued are cut until it is under 7/8 of the share.
    #[cold]
    fn cut_biggest_backlogs(&mut self) {
        let mut backlogs: Vec<(usize, ConnId)> =
            self.conns.iter().filter(|(_, c)| !c.out.is_empty()).map(|(id, c)| (c.out.len(), *id)).collect();
        backlogs.sort_unstable_by(|a, b| b.cmp(a));
        let target = self.limits.output_share / 8 * 7;
        for (_, conn) in backlogs {
            if self.out_bytes <= target {
                break;
            }
            self.stats.cut_output_memory += 1;
            self.cut(conn);
        }
        crate::warn_limited!(
            "client output passed this worker's share of limits.max_output_memory_bytes: cut the biggest backlogs"
        );
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

    /// Sends an ERROR frame answering `(cmd, seq)`, unsequenced (a flood
    /// of refusals never fills the replay buffer). Before login, every ERROR
    /// counts as a bad frame ([`Gateway::count_bad_frame`]).
    pub(crate) fn send_error(&mut self, conn: ConnId, cmd: u32, seq: u32, code: ErrorCode, message: &str) {
        let err = portcullis_proto::pb::client::Error { code: code as i32, message: message.into(), cmd };
        self.send_payload(conn, Envelope::new(cmd::ERROR, seq, flags::RESPONSE, &[]), &err, false);
        if self.conns.get(&conn).is_some_and(|c| !c.logged_in && !c.closing) {
            self.count_error_before_login(conn);
        }
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
        self.kick_session_with(session, reason, false);
    }

    /// Ends a session of this worker with a KICK (if it is connected)
    /// saying whether to reconnect; false if there is no such session.
    pub(crate) fn kick_session_with(&mut self, session: SessionId, reason: &str, reconnect: bool) -> bool {
        let Some(s) = self.sessions.get(session) else { return false };
        let (conn, user) = (s.conn, s.user_id().unwrap_or_default().to_owned());
        self.event(crate::admin::EventKind::Kick, session, &user, "", reason);
        match conn {
            Some(conn) => self.kick(conn, reason, reconnect),
            None => self.end_session(session),
        }
        true
    }

    /// Pushes a business message to local sessions; returns how many took it.
    /// `extra` flags: [`flags::UNRELIABLE`] sends it as a datagram where
    /// the connection takes one.
    pub(crate) fn push_to(&mut self, targets: &[SessionId], cmd: u32, payload: &[u8], extra: u32) -> usize {
        let mut n = 0;
        for &sid in targets {
            if self.deliver(sid, &mut Envelope::new(cmd, 0, flags::PUSH | extra, payload)) {
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

/// Brings a worker's output total up to date with the buffer of `c`.
fn account(total: &mut usize, c: &mut Conn) {
    *total = *total - c.accounted + c.out.len();
    c.accounted = c.out.len();
}
