//! The sans-IO gateway core: decode → session → framework commands → route
//! → encode, for one worker.
//!
//! The core never touches a socket or the OS clock. An IO backend drives it:
//!
//! 1. **Inputs** — `handle_connect`, `handle_data`, `handle_writable`,
//!    `handle_disconnect` for client connections; `handle_link_connected`,
//!    `handle_link_data`, `handle_link_writable`, `handle_link_closed` for
//!    game-server links; `handle_timeout` when [`Gateway::poll_timeout`] is due.
//!    Each takes `now`.
//! 2. **Outputs** — after any input, call [`Gateway::poll_output`] until it
//!    returns `None` and carry out each [`Output`]: write
//!    [`Gateway::outbound`] / [`Gateway::link_outbound`] and report what was
//!    written with `consume*`; close; connect.
//! 3. **Timer** — wait no longer than [`Gateway::poll_timeout`].
//!
//! Encoded output accumulates in one buffer per connection, so a burst of
//! responses leaves in one write.

mod stats;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use portcullis_proto::framework::Payload;
use portcullis_proto::link::{self, RequestRef, ServerFrame};
use portcullis_proto::pb::client::{ErrorCode, Kick};
use portcullis_proto::pb::link::{link_frame, Hello, SessionClosed};
use portcullis_proto::{cmd, flags, Codec, Envelope, FrameError, Framing};
use rustc_hash::FxHashMap;

pub use self::stats::Stats;
use crate::auth::Authenticator;
use crate::backend::{Link, LinkState, MAX_LINK_FRAME};
use crate::config::Config;
use crate::route::{LinkId, Router};
use crate::session::{ConnId, SessionId, SessionTable};

/// Something the IO backend must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Write [`Gateway::outbound`] of this connection.
    Transmit(ConnId),
    /// Write what is pending, close the connection, then call
    /// [`Gateway::handle_disconnect`].
    Close(ConnId),
    /// Open a TCP connection to a game server; report with
    /// [`Gateway::handle_link_connected`] or [`Gateway::handle_link_closed`].
    ConnectLink(LinkId, SocketAddr),
    /// Write [`Gateway::link_outbound`] of this link.
    TransmitLink(LinkId),
    /// Close this link's socket (the core already counts it as down).
    CloseLink(LinkId),
}

/// Per-listener settings the core needs.
#[derive(Debug, Clone, Copy)]
struct ListenerSpec {
    codec: Codec,
    max_frame: usize,
}

/// A client connection.
#[derive(Debug)]
struct Conn {
    session: SessionId,
    codec: Codec,
    max_frame: usize,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    queued: bool,
    closing: bool,
    bad_frames: u32,
}

/// Limits copied out of the config.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) heartbeat_timeout: Duration,
    pub(crate) max_outbound: usize,
    pub(crate) max_bad_frames: u32,
    pub(crate) max_groups: usize,
    pub(crate) max_name: usize,
    pub(crate) reconnect: Duration,
    pub(crate) max_link_outbound: usize,
    pub(crate) gateway_name: String,
}

/// The gateway core of one worker. See the module docs for how to drive it.
pub struct Gateway {
    pub(crate) limits: Limits,
    listeners: Vec<ListenerSpec>,
    /// `now` at construction and the Unix time it corresponds to.
    clock: (Instant, u64),
    conns: FxHashMap<ConnId, Conn>,
    pub(crate) sessions: SessionTable,
    router: Router,
    links: Vec<Link>,
    pub(crate) auth: Box<dyn Authenticator>,
    outputs: VecDeque<Output>,
    pub(crate) stats: Stats,
    next_session: SessionId,
    next_sweep: Instant,
    shutting_down: bool,
    /// Reused buffers: framework payloads, fan-out targets, and one encoded
    /// frame per codec during a fan-out.
    pub(crate) scratch: Vec<u8>,
    targets: Vec<ConnId>,
    fanout: [Vec<u8>; 4],
}

impl Gateway {
    /// A core for a validated config. `now` and `unix_now` (seconds) anchor
    /// its clock: later `now`s are converted to Unix time from them.
    pub fn new(config: &Config, auth: Box<dyn Authenticator>, now: Instant, unix_now: u64) -> Gateway {
        let g = &config.gateway;
        let router = Router::new(config);
        let links = config
            .services
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.servers.iter().map(move |a| Link::new(*a, i, now)))
            .collect();
        let listeners = (0..config.listeners.len())
            .map(|i| ListenerSpec { codec: config.listeners[i].codec, max_frame: config.max_frame(i) })
            .collect();
        let mut core = Gateway {
            limits: Limits {
                heartbeat_timeout: Duration::from_millis(g.heartbeat_timeout_ms),
                max_outbound: g.max_outbound_bytes,
                max_bad_frames: g.max_bad_frames,
                max_groups: g.max_groups_per_session,
                max_name: g.max_name_bytes,
                reconnect: Duration::from_millis(g.backend_reconnect_ms),
                max_link_outbound: g.max_backend_outbound_bytes,
                gateway_name: g.name.clone(),
            },
            listeners,
            clock: (now, unix_now),
            conns: FxHashMap::default(),
            sessions: SessionTable::default(),
            router,
            links,
            auth,
            outputs: VecDeque::new(),
            stats: Stats::default(),
            next_session: 1,
            next_sweep: now,
            shutting_down: false,
            scratch: Vec::new(),
            targets: Vec::new(),
            fanout: Default::default(),
        };
        core.handle_timeout(now);
        core
    }

    // ----- getters -------------------------------------------------------

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The sessions, with their user and group indexes.
    pub fn sessions(&self) -> &SessionTable {
        &self.sessions
    }

    /// Number of open client connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Number of game-server links that are up.
    pub fn links_up(&self) -> usize {
        self.links.iter().filter(|l| l.state == LinkState::Up).count()
    }

    /// The session carried by a connection.
    pub fn session_of(&self, conn: ConnId) -> Option<SessionId> {
        self.conns.get(&conn).map(|c| c.session)
    }

    /// Unix seconds at `now`, by the core's clock.
    pub fn unix_time(&self, now: Instant) -> u64 {
        self.clock.1 + now.saturating_duration_since(self.clock.0).as_secs()
    }

    /// Whether [`Gateway::shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    // ----- client connection inputs ---------------------------------------

    /// A client connected on listener `listener` (index in the config).
    pub fn handle_connect(&mut self, now: Instant, conn: ConnId, listener: usize, _peer: SocketAddr) {
        let spec = self.listeners[listener];
        let session = self.next_session;
        self.next_session += 1;
        self.sessions.insert(session, conn, now);
        self.conns.insert(
            conn,
            Conn {
                session,
                codec: spec.codec,
                max_frame: spec.max_frame,
                inbuf: Vec::new(),
                out: Vec::new(),
                queued: false,
                closing: false,
                bad_frames: 0,
            },
        );
        self.stats.connections += 1;
        if self.shutting_down {
            self.kick(conn, "gateway shutting down: reconnect to another gateway");
        }
    }

    /// Bytes arrived on a client connection.
    pub fn handle_data(&mut self, now: Instant, conn: ConnId, data: &[u8]) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.closing {
            return;
        }
        if c.inbuf.is_empty() {
            // Fast path: frames are parsed straight from the caller's buffer
            // and only an incomplete tail is copied.
            if let Some(used) = self.process_frames(now, conn, data) {
                if used < data.len() {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.inbuf.extend_from_slice(&data[used..]);
                    }
                }
            }
        } else {
            let mut buf = std::mem::take(&mut c.inbuf);
            buf.extend_from_slice(data);
            if let Some(used) = self.process_frames(now, conn, &buf) {
                buf.drain(..used);
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.inbuf = buf;
                }
            }
        }
    }

    /// A client connection that had output pending can take more.
    pub fn handle_writable(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            if !c.out.is_empty() && !c.queued {
                c.queued = true;
                self.outputs.push_back(Output::Transmit(conn));
            }
        }
    }

    /// A client connection is gone (closed by the peer, by an error, or
    /// after an [`Output::Close`]).
    pub fn handle_disconnect(&mut self, _now: Instant, conn: ConnId) {
        if let Some(c) = self.conns.remove(&conn) {
            self.end_session(c.session);
        }
    }

    // ----- game-server link inputs -----------------------------------------

    /// A link's connect succeeded.
    pub fn handle_link_connected(&mut self, _now: Instant, link: LinkId) {
        let name = self.limits.gateway_name.clone();
        let l = &mut self.links[link];
        l.state = LinkState::Up;
        l.out.clear();
        l.inbuf.clear();
        link::encode_frame(link_frame::Kind::Hello(Hello { gateway: name, worker: 0 }), &mut l.out);
        self.queue_link(link);
    }

    /// Bytes arrived from a game server.
    pub fn handle_link_data(&mut self, now: Instant, link: LinkId, data: &[u8]) {
        if self.links[link].state != LinkState::Up {
            return;
        }
        let mut buf = std::mem::take(&mut self.links[link].inbuf);
        buf.extend_from_slice(data);
        let mut pos = 0;
        let ok = loop {
            match Framing::LengthPrefixed.next_frame(&buf[pos..], MAX_LINK_FRAME) {
                Ok(Some((range, used))) => {
                    let frame = &buf[pos + range.start..pos + range.end];
                    pos += used;
                    match ServerFrame::decode(frame) {
                        Ok(f) => self.on_server_frame(f),
                        Err(_) => break false,
                    }
                }
                Ok(None) => break true,
                Err(_) => break false,
            }
        };
        if ok {
            buf.drain(..pos);
            self.links[link].inbuf = buf;
        } else {
            self.stats.drop_bad_link_frame += 1;
            self.handle_link_closed(now, link);
            self.outputs.push_back(Output::CloseLink(link));
        }
    }

    /// A link with output pending can take more.
    pub fn handle_link_writable(&mut self, link: LinkId) {
        if !self.links[link].out.is_empty() {
            self.queue_link(link);
        }
    }

    /// A link's connect failed or its connection dropped.
    pub fn handle_link_closed(&mut self, now: Instant, link: LinkId) {
        let l = &mut self.links[link];
        if matches!(l.state, LinkState::Down { .. }) {
            return;
        }
        l.state = LinkState::Down { retry_at: now + self.limits.reconnect };
        l.out.clear();
        l.inbuf.clear();
        self.stats.link_failures += 1;
    }

    // ----- time ------------------------------------------------------------

    /// When [`Gateway::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let retries = self.links.iter().filter_map(|l| match l.state {
            LinkState::Down { retry_at } => Some(retry_at),
            _ => None,
        });
        retries.chain([self.next_sweep]).min()
    }

    /// Runs what is due at `now`: heartbeat deadlines, link reconnects.
    pub fn handle_timeout(&mut self, now: Instant) {
        for (id, l) in self.links.iter_mut().enumerate() {
            if matches!(l.state, LinkState::Down { retry_at } if retry_at <= now) {
                l.state = LinkState::Connecting;
                self.outputs.push_back(Output::ConnectLink(id, l.addr));
            }
        }
        if now < self.next_sweep {
            return;
        }
        // A sweep over all sessions, a few times per deadline: O(sessions)
        // per interval and no per-frame timer work.
        let timeout = self.limits.heartbeat_timeout;
        let interval = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        self.next_sweep = now + interval;
        let mut idle = std::mem::take(&mut self.targets);
        idle.clear();
        idle.extend(
            self.sessions.iter().filter(|s| now.saturating_duration_since(s.last_seen) >= timeout).map(|s| s.conn),
        );
        for &conn in &idle {
            self.stats.heartbeat_timeouts += 1;
            self.kick(conn, "heartbeat timeout");
        }
        self.targets = idle;
    }

    /// Starts a shutdown: every client gets a KICK telling it to reconnect
    /// elsewhere and is closed; new connections are refused the same way.
    pub fn shutdown(&mut self, _now: Instant) {
        self.shutting_down = true;
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            self.kick(conn, "gateway shutting down: reconnect to another gateway");
        }
    }

    // ----- outputs ---------------------------------------------------------

    /// The next thing for the IO backend to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        let out = self.outputs.pop_front()?;
        match out {
            Output::Transmit(conn) => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.queued = false;
                }
            }
            Output::TransmitLink(link) => self.links[link].queued = false,
            _ => {}
        }
        Some(out)
    }

    /// Bytes waiting to be written to a client connection.
    pub fn outbound(&self, conn: ConnId) -> &[u8] {
        self.conns.get(&conn).map_or(&[], |c| &c.out)
    }

    /// `n` bytes of [`Gateway::outbound`] were written.
    pub fn consume(&mut self, conn: ConnId, n: usize) {
        if let Some(c) = self.conns.get_mut(&conn) {
            drain_front(&mut c.out, n);
        }
    }

    /// Bytes waiting to be written to a game-server link.
    pub fn link_outbound(&self, link: LinkId) -> &[u8] {
        &self.links[link].out
    }

    /// `n` bytes of [`Gateway::link_outbound`] were written.
    pub fn consume_link(&mut self, link: LinkId, n: usize) {
        drain_front(&mut self.links[link].out, n);
    }

    // ----- the message path --------------------------------------------------

    /// Splits frames off `buf` and runs each through the path. Returns the
    /// bytes consumed, or `None` once the connection is closing.
    fn process_frames(&mut self, now: Instant, conn: ConnId, buf: &[u8]) -> Option<usize> {
        let c = self.conns.get(&conn)?;
        let (session, codec, max) = (c.session, c.codec, c.max_frame);
        if let Some(s) = self.sessions.get_mut(session) {
            s.last_seen = now;
        }
        let framing = codec.framing();
        let mut pos = 0;
        loop {
            match framing.next_frame(&buf[pos..], max) {
                Ok(Some((range, used))) => {
                    let frame = &buf[pos + range.start..pos + range.end];
                    pos += used;
                    if !self.on_frame(now, conn, session, codec, frame) {
                        return None;
                    }
                }
                Ok(None) => return Some(pos),
                Err(FrameError::TooLarge { len, max }) => {
                    self.stats.drop_frame_too_large += 1;
                    let msg = format!("frame of {len} bytes exceeds the maximum of {max}");
                    self.send_error(conn, 0, 0, ErrorCode::FrameTooLarge, &msg);
                    self.close(conn);
                    return None;
                }
            }
        }
    }

    /// One frame through decode → framework or route. Returns whether the
    /// connection is still open.
    fn on_frame(&mut self, now: Instant, conn: ConnId, session: SessionId, codec: Codec, frame: &[u8]) -> bool {
        let env = match codec.decode(frame) {
            Ok(env) => env,
            Err(e) => {
                self.stats.drop_bad_frame += 1;
                self.send_error(conn, 0, 0, ErrorCode::BadFrame, &format!("undecodable {codec} frame: {e}"));
                return self.count_bad_frame(conn);
            }
        };
        self.stats.frames_in += 1;
        if cmd::is_framework(env.cmd) {
            return self.on_framework(now, conn, session, codec, &env);
        }
        self.on_business(conn, session, &env);
        true
    }

    /// Counts a refused frame against the connection; closes it at the
    /// limit. Returns whether it is still open.
    pub(crate) fn count_bad_frame(&mut self, conn: ConnId) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        c.bad_frames += 1;
        if c.bad_frames >= self.limits.max_bad_frames {
            self.close(conn);
            return false;
        }
        true
    }

    /// A business command: check login, route, forward to a game server.
    fn on_business(&mut self, conn: ConnId, session: SessionId, env: &Envelope<'_>) {
        let Some(s) = self.sessions.get_mut(session) else {
            return;
        };
        let Some(user) = &s.user else {
            self.stats.drop_not_logged_in += 1;
            return self.send_error(conn, env.cmd, env.seq, ErrorCode::NotLoggedIn, "log in first");
        };
        let Some(service) = self.router.service_of(env.cmd) else {
            self.stats.drop_unknown_command += 1;
            return self.send_error(conn, env.cmd, env.seq, ErrorCode::UnknownCommand, "no route for this command");
        };
        let (links, max) = (&self.links, self.limits.max_link_outbound);
        let Some(link) = self.router.pick(service, |l| links[l].accepts(max)) else {
            self.stats.drop_backend_unavailable += 1;
            let msg = format!("no game server of service {:?} is available", self.router.services()[service].name);
            return self.send_error(conn, env.cmd, env.seq, ErrorCode::BackendUnavailable, &msg);
        };
        s.links_used |= 1 << (link % 64);
        let req = RequestRef {
            session_id: session,
            user_id: &user.user_id,
            cmd: env.cmd,
            seq: env.seq,
            payload: &env.payload,
            route_key: env.route_key(),
        };
        link::encode_request(&req, &mut self.links[link].out);
        self.stats.requests += 1;
        self.queue_link(link);
    }

    /// A frame from a game server.
    fn on_server_frame(&mut self, frame: ServerFrame<'_>) {
        match frame {
            ServerFrame::Reply { session_id, cmd, seq, payload, error, error_message } => {
                let Some(conn) = self.sessions.get(session_id).map(|s| s.conn) else {
                    self.stats.drop_session_gone += 1;
                    return;
                };
                if error != 0 {
                    let msg = format!("game server error {error}: {error_message}");
                    self.send_error(conn, cmd, seq, ErrorCode::BackendError, &msg);
                } else {
                    self.stats.replies += 1;
                    self.send(conn, &Envelope::new(cmd, seq, flags::RESPONSE, payload));
                }
            }
            ServerFrame::PushToSession { session_id, cmd, payload } => {
                let Some(conn) = self.sessions.get(session_id).map(|s| s.conn) else {
                    self.stats.drop_session_gone += 1;
                    return;
                };
                self.stats.pushes += 1;
                self.send(conn, &Envelope::new(cmd, 0, flags::PUSH, payload));
            }
            ServerFrame::PushToUser { user_id, cmd, payload } => {
                let mut targets = self.take_targets();
                targets.extend(self.sessions.conns_of(self.sessions.of_user(user_id).iter().copied()));
                self.fan_out(targets, |codec, out| codec.encode(&Envelope::new(cmd, 0, flags::PUSH, payload), out));
            }
            ServerFrame::PushToGroup { group, cmd, payload } => {
                let mut targets = self.take_targets();
                targets.extend(self.sessions.conns_of(self.sessions.members(group)));
                self.fan_out(targets, |codec, out| codec.encode(&Envelope::new(cmd, 0, flags::PUSH, payload), out));
            }
            ServerFrame::Broadcast { cmd, payload } => {
                let mut targets = self.take_targets();
                targets.extend(self.sessions.iter().filter(|s| s.user.is_some()).map(|s| s.conn));
                self.fan_out(targets, |codec, out| codec.encode(&Envelope::new(cmd, 0, flags::PUSH, payload), out));
            }
        }
    }

    // ----- sending -----------------------------------------------------------

    /// The reused fan-out target list, empty; hand it back to `fan_out`.
    pub(crate) fn take_targets(&mut self) -> Vec<ConnId> {
        let mut targets = std::mem::take(&mut self.targets);
        targets.clear();
        targets
    }

    /// Sends one message to many connections, encoding it once per codec.
    /// Returns how many connections it was queued on.
    pub(crate) fn fan_out(&mut self, targets: Vec<ConnId>, encode: impl Fn(Codec, &mut Vec<u8>)) -> usize {
        let mut frames = std::mem::take(&mut self.fanout);
        frames.iter_mut().for_each(Vec::clear);
        let mut delivered = 0;
        for &conn in &targets {
            let Some(c) = self.conns.get(&conn) else {
                continue;
            };
            let frame = &mut frames[c.codec as usize];
            if frame.is_empty() {
                encode(c.codec, frame);
            }
            if self.append(conn, frame) {
                delivered += 1;
            }
        }
        self.stats.pushes += delivered as u64;
        self.fanout = frames;
        self.targets = targets;
        delivered
    }

    /// Encodes an envelope onto a connection.
    pub(crate) fn send(&mut self, conn: ConnId, env: &Envelope<'_>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.closing {
            return;
        }
        c.codec.encode(env, &mut c.out);
        self.after_append(conn);
    }

    /// Appends an already encoded frame to a connection.
    fn append(&mut self, conn: ConnId, frame: &[u8]) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        if c.closing {
            return false;
        }
        c.out.extend_from_slice(frame);
        self.after_append(conn)
    }

    /// Queues a transmit, or disconnects a client whose unsent output passed
    /// the high-water mark. Returns whether the frame stays queued.
    fn after_append(&mut self, conn: ConnId) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        self.stats.frames_out += 1;
        if c.out.len() > self.limits.max_outbound {
            self.stats.slow_consumers += 1;
            // Nothing more can reach a client that does not read: drop its
            // backlog and close.
            c.out.clear();
            self.close(conn);
            return false;
        }
        if !c.queued {
            c.queued = true;
            self.outputs.push_back(Output::Transmit(conn));
        }
        true
    }

    /// Sends a framework payload message in the connection's payload form.
    pub(crate) fn send_payload<M: Payload>(&mut self, conn: ConnId, cmd: u32, seq: u32, flags: u32, msg: &M) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        c.codec.payload_form().encode(msg, &mut buf);
        self.send(conn, &Envelope::new(cmd, seq, flags, &buf));
        self.scratch = buf;
    }

    /// Sends an ERROR frame answering `(cmd, seq)`.
    pub(crate) fn send_error(&mut self, conn: ConnId, cmd: u32, seq: u32, code: ErrorCode, message: &str) {
        let err = portcullis_proto::pb::client::Error { code: code as i32, message: message.into(), cmd };
        self.send_payload(conn, cmd::ERROR, seq, flags::RESPONSE, &err);
    }

    /// Sends a KICK notification, then closes the connection.
    pub(crate) fn kick(&mut self, conn: ConnId, reason: &str) {
        self.send_payload(conn, cmd::KICK, 0, flags::PUSH, &Kick { reason: reason.into() });
        self.close(conn);
    }

    /// Closes a connection after its pending output; its session ends now.
    pub(crate) fn close(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.closing {
            return;
        }
        c.closing = true;
        let session = c.session;
        self.outputs.push_back(Output::Close(conn));
        self.end_session(session);
    }

    /// Removes a session and tells the game servers it used.
    fn end_session(&mut self, session: SessionId) {
        let Some(s) = self.sessions.remove(session) else {
            return;
        };
        if s.links_used == 0 {
            return;
        }
        let user_id = s.user.map(|u| u.user_id.into_string()).unwrap_or_default();
        for id in 0..self.links.len() {
            if s.links_used & (1 << (id % 64)) != 0 && self.links[id].state == LinkState::Up {
                let closed = SessionClosed { session_id: session, user_id: user_id.clone() };
                link::encode_frame(link_frame::Kind::SessionClosed(closed), &mut self.links[id].out);
                self.queue_link(id);
            }
        }
    }

    fn queue_link(&mut self, link: LinkId) {
        let l = &mut self.links[link];
        if !l.queued {
            l.queued = true;
            self.outputs.push_back(Output::TransmitLink(link));
        }
    }
}

/// Drops the first `n` bytes of a buffer.
fn drain_front(buf: &mut Vec<u8>, n: usize) {
    if n >= buf.len() {
        buf.clear();
    } else {
        buf.drain(..n);
    }
}

#[cfg(test)]
mod tests;
