//! Routing business commands to game servers and everything that comes back
//! over the links: replies, pushes, health checks, status.

use std::time::Instant;

use portcullis_proto::link::{self, RequestRef, ServerFrame};
use portcullis_proto::pb::client::ErrorCode;
use portcullis_proto::pb::link::{link_frame, Hello, Ping, SessionClosed};
use portcullis_proto::{cmd, flags, Envelope, Framing};

use super::Gateway;
use crate::admin::EventKind;
use crate::backend::{InFlight, LinkState, Pending, MAX_LINK_FRAME};
use crate::conn::ConnId;
use crate::route::{LinkId, PickKey};
use crate::session::SessionId;
use crate::shard::CrossMsg;

/// Where an answer from a game server goes.
enum Answer<'a> {
    Response { cmd: u32, seq: u32, flags: u32, payload: &'a [u8] },
    Error { cmd: u32, seq: u32, code: ErrorCode, message: String },
}

/// The envelope flag of a link push's `unreliable`.
fn unreliable_flag(unreliable: bool) -> u32 {
    if unreliable {
        flags::UNRELIABLE
    } else {
        0
    }
}

impl Gateway {
    /// A business command (that passed the check stage): pick a game
    /// server, forward.
    pub(crate) fn on_business(&mut self, conn: ConnId, session: SessionId, env: &Envelope<'_>) {
        let Some(service) = self.router.service_of(env.cmd) else {
            self.stats.drop_unknown_command += 1;
            return self.send_error(conn, env.cmd, env.seq, ErrorCode::UnknownCommand, "no route for this command");
        };
        let Some(link) = self.pick_link(session, service, env.route_key()) else {
            self.stats.drop_backend_unavailable += 1;
            let msg = format!("no game server of service {:?} is available", self.router.services()[service].name);
            // In place of the game server's answer: sequenced, like it.
            return self.error_to_session(session, env.cmd, env.seq, ErrorCode::BackendUnavailable, &msg);
        };
        let deadline = self.now + self.limits.request_timeout;
        let kind = Pending::Business { unreliable: env.flags & flags::UNRELIABLE != 0 };
        self.forward(link, session, env.cmd, env.seq, &env.payload, env.route_key(), deadline, kind);
    }

    /// Picks the game server of `service` for a session's request: its
    /// sticky server while that is up, else one chosen by the service's
    /// policy among servers that take new sessions — or that this session
    /// already used: a drained (or draining) server keeps serving the
    /// sessions it has and gets no new ones.
    pub(crate) fn pick_link(&mut self, session: SessionId, service: usize, route_key: Option<&[u8]>) -> Option<LinkId> {
        let s = self.sessions.get_mut(session)?;
        let (links, max) = (&self.links, self.limits.max_link_outbound);
        let svc = self.router.service_mut(service);
        if svc.sticky {
            if let Some(&(_, l)) = s.sticky.iter().find(|(sv, _)| usize::from(*sv) == service) {
                if links[usize::from(l)].accepts(max) {
                    return Some(usize::from(l));
                }
            }
        }
        let key = PickKey { user_id: s.user_id().unwrap_or_default(), route_key };
        let used = s.links_used;
        let usable = |l: LinkId| links[l].accepts_new(max) || (links[l].accepts(max) && used & (1 << (l % 64)) != 0);
        let link = svc.pick(key, usable, |l| links[l].inflight.len())?;
        if svc.sticky {
            s.sticky.retain(|(sv, _)| usize::from(*sv) != service);
            s.sticky.push((service as u16, link as u16));
        }
        Some(link)
    }

    /// Sends a request over a link and tracks it until answered.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &mut self,
        link: LinkId,
        session: SessionId,
        cmd: u32,
        seq: u32,
        payload: &[u8],
        route_key: Option<&[u8]>,
        deadline: Instant,
        kind: Pending,
    ) {
        let Some(s) = self.sessions.get_mut(session) else { return };
        s.links_used |= 1 << (link % 64);
        let l = &mut self.links[link];
        let request_id = l.next_request;
        l.next_request += 1;
        let req = RequestRef {
            session_id: session,
            user_id: s.user_id().unwrap_or_default(),
            cmd,
            seq,
            payload,
            route_key,
            request_id,
            unreliable: matches!(kind, Pending::Business { unreliable: true }),
        };
        link::encode_request(&req, &mut l.out);
        l.inflight.insert(request_id, InFlight { session, cmd, seq, deadline, kind, sent: self.now });
        self.stats.requests += 1;
        self.queue_link(link);
    }

    // ----- link inputs ---------------------------------------------------------

    /// A link's connect succeeded.
    pub fn handle_link_connected(&mut self, now: Instant, link: LinkId) {
        self.now = now;
        let name = self.limits.gateway_name.clone();
        let l = &mut self.links[link];
        l.state = LinkState::Up;
        l.draining = false;
        l.out.clear();
        l.inbuf.clear();
        l.ping = None;
        l.next_ping = now;
        link::encode_frame(link_frame::Kind::Hello(Hello { gateway: name, worker: self.worker as u32 }), &mut l.out);
        let (addr, service) = (l.addr.to_string(), l.service);
        for (session_id, user_id) in l.closed_while_down.drain(..) {
            let closed = SessionClosed { session_id, user_id: user_id.into_string() };
            link::encode_frame(link_frame::Kind::SessionClosed(closed), &mut l.out);
        }
        self.queue_link(link);
        self.link_timers();
        let service = self.router.services()[service].name.clone();
        self.event(crate::admin::EventKind::BackendUp, 0, "", &addr, &service);
    }

    /// Bytes arrived from a game server.
    pub fn handle_link_data(&mut self, now: Instant, link: LinkId, data: &[u8]) {
        self.now = now;
        if self.links[link].state != LinkState::Up {
            return;
        }
        let mut buf = std::mem::take(&mut self.links[link].inbuf);
        let fast = buf.is_empty();
        if !fast {
            buf.extend_from_slice(data);
        }
        let input = if fast { data } else { &buf[..] };
        let mut pos = 0;
        let ok = loop {
            match Framing::LengthPrefixed.next_frame(&input[pos..], MAX_LINK_FRAME) {
                Ok(Some((range, used))) => {
                    let frame = &input[pos + range.start..pos + range.end];
                    pos += used;
                    match ServerFrame::decode(frame) {
                        Ok(f) => self.on_server_frame(link, f),
                        Err(_) => break false,
                    }
                    if self.links[link].state != LinkState::Up {
                        return;
                    }
                }
                Ok(None) => break true,
                Err(_) => break false,
            }
        };
        if !ok {
            self.stats.drop_bad_link_frame += 1;
            return self.link_down(link, "sent an undecodable frame");
        }
        if fast {
            buf.extend_from_slice(&data[pos..]);
        } else {
            buf.drain(..pos);
        }
        self.links[link].inbuf = buf;
    }

    /// A link with output pending can take more.
    pub fn handle_link_writable(&mut self, link: LinkId) {
        if !self.links[link].out.is_empty() {
            self.queue_link(link);
        }
    }

    /// A link's connect failed or its connection dropped.
    pub fn handle_link_closed(&mut self, now: Instant, link: LinkId) {
        self.now = now;
        self.mark_down(link, "went down");
    }

    /// Takes a link down from the core's side: the IO backend closes it.
    pub(crate) fn link_down(&mut self, link: LinkId, why: &str) {
        self.mark_down(link, why);
        self.push_output(super::Output::CloseLink(link));
    }

    /// A link is down: every request in flight on it is answered with an
    /// error, and a reconnect is scheduled with backoff.
    fn mark_down(&mut self, link: LinkId, why: &str) {
        let (base, max) = self.limits.reconnect;
        let l = &mut self.links[link];
        if matches!(l.state, LinkState::Down { .. } | LinkState::Retired) {
            return;
        }
        let was_up = l.state == LinkState::Up;
        l.state = LinkState::Down { retry_at: self.now + l.backoff(base, max) };
        l.failures = l.failures.saturating_add(1);
        l.out.clear();
        l.inbuf.clear();
        l.ping = None;
        let lost: Vec<InFlight> = l.inflight.drain().map(|(_, f)| f).collect();
        let addr = l.addr;
        self.stats.link_failures += 1;
        if was_up {
            tracing::warn!("game server {addr} {why}; {} request(s) in flight answered with errors", lost.len());
            self.event(crate::admin::EventKind::BackendDown, 0, "", &addr.to_string(), why);
        }
        for f in lost {
            self.stats.drop_backend_lost += 1;
            let message = format!("game server {addr} {why} before answering");
            self.fail_request(f, ErrorCode::BackendUnavailable, message);
        }
    }

    /// Answers a request that will get no reply from its game server.
    fn fail_request(&mut self, f: InFlight, code: ErrorCode, message: String) {
        match f.kind {
            Pending::Login(conn) => {
                self.login_failed(conn, f.seq, &message);
            }
            Pending::Business { .. } => {
                self.latencies.client_answer.record(self.now.saturating_duration_since(f.sent));
                self.answer_session(f.session, Answer::Error { cmd: f.cmd, seq: f.seq, code, message })
            }
        }
    }

    /// Reconnects due links, pings healthy ones, drops unresponsive ones.
    pub(crate) fn link_timers(&mut self) {
        let now = self.now;
        for id in 0..self.links.len() {
            let l = &mut self.links[id];
            match l.state {
                LinkState::Connecting if now.saturating_duration_since(l.next_ping) >= self.limits.health_timeout => {
                    // `next_ping` holds when the connect started.
                    self.link_down(id, "did not accept the connection in time");
                }
                LinkState::Down { retry_at } if retry_at <= now => {
                    l.state = LinkState::Connecting;
                    l.next_ping = now;
                    let addr = l.addr;
                    self.push_output(super::Output::ConnectLink(id, addr));
                }
                LinkState::Up => match l.ping {
                    Some((_, sent)) if now.saturating_duration_since(sent) >= self.limits.health_timeout => {
                        self.link_down(id, "did not answer its health check");
                    }
                    None if now >= l.next_ping => {
                        let nonce = l.next_request;
                        l.ping = Some((nonce, now));
                        link::encode_frame(link_frame::Kind::Ping(Ping { nonce }), &mut l.out);
                        self.queue_link(id);
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }

    /// Answers requests whose game server did not reply in time.
    pub(crate) fn expire_requests(&mut self) {
        let now = self.now;
        for id in 0..self.links.len() {
            let l = &mut self.links[id];
            if l.inflight.is_empty() {
                continue;
            }
            let expired: Vec<u64> = l.inflight.iter().filter(|(_, f)| f.deadline <= now).map(|(k, _)| *k).collect();
            let addr = l.addr;
            for rid in expired {
                let f = self.links[id].inflight.remove(&rid).expect("listed");
                self.stats.drop_backend_timeout += 1;
                let message = format!("game server {addr} did not answer in time");
                self.fail_request(f, ErrorCode::BackendTimeout, message);
            }
        }
    }

    /// A frame from a game server.
    fn on_server_frame(&mut self, link: LinkId, frame: ServerFrame<'_>) {
        match frame {
            ServerFrame::Reply { session_id: _, cmd, seq: _, payload, error, error_message, request_id, silent } => {
                let Some(f) = self.links[link].inflight.remove(&request_id) else {
                    self.stats.drop_late_reply += 1;
                    return;
                };
                if let Pending::Login(conn) = f.kind {
                    return self.delegated_login_answered(conn, f.seq, payload, error, error_message);
                }
                let rtt = self.now.saturating_duration_since(f.sent);
                if let Some((_, h)) = self.latencies.backend.get_mut(self.links[link].service) {
                    h.record(rtt);
                }
                if silent {
                    return;
                }
                self.latencies.client_answer.record(rtt);
                // Routed by what we sent, not by what the game server says.
                let (session_id, seq) = (f.session, f.seq);
                let answer = if error != 0 {
                    let message = format!("game server error {error}: {error_message}");
                    Answer::Error { cmd, seq, code: ErrorCode::BackendError, message }
                } else {
                    self.stats.replies += 1;
                    let unreliable = matches!(f.kind, Pending::Business { unreliable: true });
                    let flags = flags::RESPONSE | if unreliable { flags::UNRELIABLE } else { 0 };
                    Answer::Response { cmd, seq, flags, payload }
                };
                self.answer_session(session_id, answer);
            }
            ServerFrame::PushToSession { session_id, cmd, payload, unreliable } => {
                if self.sessions.get(session_id).is_some() {
                    self.push_to(&[session_id], cmd, payload, unreliable_flag(unreliable));
                } else {
                    self.forward_push(session_id, cmd, payload, unreliable_flag(unreliable));
                }
            }
            ServerFrame::PushToUser { user_id, cmd, payload, unreliable } => {
                let targets = self.sessions.of_user(user_id).to_vec();
                self.push_to(&targets, cmd, payload, unreliable_flag(unreliable));
            }
            ServerFrame::PushToGroup { group, cmd, payload, unreliable } => {
                let mut targets = std::mem::take(&mut self.targets);
                targets.clear();
                targets.extend(self.sessions.members(group));
                self.push_to(&targets, cmd, payload, unreliable_flag(unreliable));
                self.targets = targets;
            }
            ServerFrame::Broadcast { cmd, payload, unreliable } => {
                let mut targets = std::mem::take(&mut self.targets);
                targets.clear();
                targets.extend(self.sessions.iter().filter(|s| s.user.is_some()).map(|s| s.id));
                self.push_to(&targets, cmd, payload, unreliable_flag(unreliable));
                self.targets = targets;
            }
            ServerFrame::Pong { nonce } => {
                let l = &mut self.links[link];
                if l.ping.is_some_and(|(n, _)| n == nonce) {
                    l.ping = None;
                    l.failures = 0;
                    l.next_ping = self.now + self.limits.health_interval;
                }
            }
            ServerFrame::Status { draining } => {
                let l = &mut self.links[link];
                if l.draining != draining {
                    tracing::info!(
                        "game server {} is {}",
                        l.addr,
                        if draining { "draining" } else { "taking new sessions" }
                    );
                    l.draining = draining;
                    let (addr, kind) = (
                        l.addr.to_string(),
                        if draining { EventKind::BackendDrain } else { EventKind::BackendUndrain },
                    );
                    self.event(kind, 0, "", &addr, "announced by the game server");
                }
            }
        }
    }

    /// Delivers a game server's answer to a session, wherever it lives now.
    fn answer_session(&mut self, session: SessionId, answer: Answer<'_>) {
        if self.sessions.get(session).is_none() {
            let (cmd, seq, flags, payload) = match answer {
                Answer::Response { cmd, seq, flags, payload } => (cmd, seq, flags, payload.to_vec()),
                Answer::Error { cmd, seq, code, message } => {
                    // Carried as an error-coded forward, re-encoded by the owner.
                    return self.forward_cross(session, |session| CrossMsg::Error { session, cmd, seq, code, message });
                }
            };
            return self.forward_cross(session, |session| CrossMsg::Forward { session, cmd, seq, flags, payload });
        }
        match answer {
            Answer::Response { cmd, seq, flags, payload } => {
                self.deliver(session, &mut Envelope::new(cmd, seq, flags, payload));
            }
            Answer::Error { cmd, seq, code, message } => self.error_to_session(session, cmd, seq, code, &message),
        }
    }

    /// An ERROR in place of a game server's answer (BACKEND_*): sequenced
    /// like the answer it replaces, for a logged-in session.
    pub(crate) fn error_to_session(&mut self, session: SessionId, cmd: u32, seq: u32, code: ErrorCode, message: &str) {
        let err = portcullis_proto::pb::client::Error { code: code as i32, message: message.into(), cmd };
        let Some(form) = self.sessions.get(session).map(|s| s.codec.payload_form()) else { return };
        let body = form.encode_to_vec(&err);
        self.deliver(session, &mut Envelope::new(cmd::ERROR, seq, flags::RESPONSE, &body));
    }

    fn forward_push(&mut self, session: SessionId, cmd: u32, payload: &[u8], extra: u32) {
        let payload = payload.to_vec();
        let flags = flags::PUSH | extra;
        self.forward_cross(session, |session| CrossMsg::Forward { session, cmd, seq: 0, flags, payload });
    }

    /// Sends a message about a session that is not here to its owner, if
    /// that is another worker.
    fn forward_cross(&mut self, session: SessionId, msg: impl FnOnce(SessionId) -> CrossMsg) {
        let owner = self.shared.owner_of(session);
        if owner == self.worker || owner >= self.shared.workers() {
            self.stats.drop_session_gone += 1;
            return;
        }
        self.send_cross(owner, msg(session));
    }
}
