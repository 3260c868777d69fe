//! The sans-IO gateway core of one worker: decode → security checks →
//! session → framework commands → route → encode.
//!
//! The core never touches a socket or the OS clock. An IO backend drives it:
//!
//! 1. **Inputs** — `handle_connect`, `handle_data`, `handle_writable`,
//!    `handle_disconnect` for client connections; `handle_link_connected`,
//!    `handle_link_data`, `handle_link_writable`, `handle_link_closed` for
//!    game-server links; `handle_inbox` for messages from other workers;
//!    `handle_timeout` when [`Gateway::poll_timeout`] is due. Each takes `now`.
//! 2. **Outputs** — after any input, call [`Gateway::poll_output`] until it
//!    returns `None` and carry out each [`Output`]: write
//!    [`Gateway::outbound`] / [`Gateway::link_outbound`] and report what was
//!    written with `consume*`; close; connect.
//! 3. **Timer** — wait no longer than [`Gateway::poll_timeout`].
//!
//! Encoded output accumulates in one buffer per connection, so a burst of
//! responses leaves in one write. Sessions of other workers are reached
//! through the [`Shared`] state's rings, never touched directly.

mod cross;
pub mod crypto;
mod deliver;
mod links;

pub(crate) use cross::SendRequest;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_proto::crypto::ConnectionKeys;
use portcullis_proto::pb::client::ErrorCode;
use portcullis_proto::{cmd, Codec, Envelope, FrameError};
use rustc_hash::FxHashMap;

use crate::auth::Authenticator;
use crate::backend::{Link, LinkState};
use crate::config::{Cipher, Config, Encryption};
use crate::conn::ConnId;
use crate::route::{LinkId, Router};
use crate::security::behaviour::Scores;
use crate::security::rate_limit::TokenBucket;
use crate::security::{Frame, Reason, Security, Verdict};
use crate::session::policy::Policy;
use crate::session::{Session, SessionId, SessionTable};
use crate::shard::Shared;
pub use crate::stats::Stats;

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
    encryption: Encryption,
    cipher: Cipher,
}

/// An operation a connection is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waiting {
    /// Nothing.
    Nothing,
    /// A delegated LOGIN.
    Login,
    /// A RESUME being answered by another worker, until the deadline.
    Resume(Instant),
}

/// A client connection.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) session: SessionId,
    pub(crate) codec: Codec,
    max_frame: usize,
    /// Its listener, by index in the config.
    listener: usize,
    pub(crate) ip: IpAddr,
    admitted: bool,
    /// Logged in or resumed: the limits of players apply, not those of
    /// strangers.
    pub(crate) logged_in: bool,
    /// Sent a LOGIN or RESUME already.
    pub(crate) tried_login: bool,
    /// Rate-limit refusals it may still get before it is closed as a flood.
    pub(crate) refusals: TokenBucket,
    inbuf: Vec<u8>,
    /// Bytes at the start of `inbuf` known to hold no line end.
    scanned: usize,
    pub(crate) out: Vec<u8>,
    /// Unreliable frames waiting to leave as datagrams (QUIC), apart from
    /// the stream; bounded, the oldest dropped first.
    pub(crate) datagrams: Vec<u8>,
    /// Bytes of `out` counted in the worker's output total.
    accounted: usize,
    queued: bool,
    pub(crate) closing: bool,
    pub(crate) bad_frames: u32,
    pub(crate) waiting: Waiting,
    /// The keys of an encrypted connection, from the answer to its LOGIN
    /// or RESUME on.
    pub(crate) keys: Option<Box<ConnectionKeys>>,
    /// The client's part of a handshake being decided: the public key of
    /// a LOGIN (a delegated one waits), the nonce of a RESUME (one on
    /// another worker waits). Boxed: most connections never hold one.
    pub(crate) handshake: Option<Box<[u8; 32]>>,
}

/// Limits copied out of the config.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) heartbeat_timeout: Duration,
    pub(crate) login_timeout: Duration,
    pub(crate) max_outbound: usize,
    pub(crate) max_outbound_before_login: usize,
    pub(crate) max_frame_before_login: usize,
    /// This worker's share of `limits.max_output_memory_bytes`.
    pub(crate) output_share: usize,
    pub(crate) max_bad_frames: u32,
    pub(crate) max_groups: usize,
    pub(crate) max_name: usize,
    pub(crate) resume_window: Duration,
    pub(crate) replay_messages: usize,
    pub(crate) replay_bytes: usize,
    pub(crate) max_connections: usize,
    pub(crate) max_per_ip: usize,
    pub(crate) max_prelogin_per_ip: usize,
    pub(crate) session_rate: (u32, u32),
    pub(crate) user_rate: (u32, u32),
    pub(crate) ip_rate: (u32, u32),
    pub(crate) peer_rate: (u32, u32),
    pub(crate) pair_rate: (u32, u32),
    pub(crate) max_recipients: usize,
    pub(crate) refusals: (u32, u32),
    pub(crate) request_timeout: Duration,
    pub(crate) health_interval: Duration,
    pub(crate) health_timeout: Duration,
    pub(crate) reconnect: (Duration, Duration),
    pub(crate) max_link_outbound: usize,
    pub(crate) shutdown_deadline: Duration,
    pub(crate) gateway_name: String,
}

impl Limits {
    fn new(c: &Config) -> Limits {
        let (g, s, l, b) = (&c.gateway, &c.sessions, &c.limits, &c.backends);
        let ms = Duration::from_millis;
        Limits {
            heartbeat_timeout: ms(g.heartbeat_timeout_ms),
            login_timeout: ms(g.login_timeout_ms),
            max_outbound: g.max_outbound_bytes,
            max_outbound_before_login: g.max_outbound_before_login_bytes,
            max_frame_before_login: g.max_frame_before_login_bytes,
            output_share: l.max_output_memory_bytes / g.workers.max(1),
            max_bad_frames: g.max_bad_frames,
            max_groups: g.max_groups_per_session,
            max_name: g.max_name_bytes,
            resume_window: ms(s.resume_window_ms),
            replay_messages: s.replay_max_messages,
            replay_bytes: s.replay_max_bytes,
            max_connections: l.max_connections,
            max_per_ip: l.max_connections_per_ip,
            max_prelogin_per_ip: l.max_prelogin_per_ip,
            session_rate: (l.session_rate, l.session_burst),
            user_rate: (l.user_rate, l.user_burst),
            ip_rate: (l.ip_rate, l.ip_burst),
            peer_rate: (l.peer_inbound_rate, l.peer_inbound_burst),
            pair_rate: (l.pair_rate, l.pair_burst),
            max_recipients: l.max_recipients,
            refusals: (l.max_refusals_per_sec, l.max_refusals_burst),
            request_timeout: ms(b.request_timeout_ms),
            health_interval: ms(b.health_interval_ms),
            health_timeout: ms(b.health_timeout_ms),
            reconnect: (ms(b.reconnect_ms), ms(b.reconnect_max_ms)),
            max_link_outbound: b.max_outbound_bytes,
            shutdown_deadline: ms(g.shutdown_deadline_ms),
            gateway_name: g.name.clone(),
        }
    }
}

/// Progress of a graceful shutdown.
#[derive(Debug, Clone, Copy)]
struct Shutdown {
    /// Clients are told to reconnect once requests in flight are answered,
    /// or at this time at the latest.
    kick_at: Instant,
    kicked: bool,
}

/// The gateway core of one worker. See the module docs for how to drive it.
pub struct Gateway {
    pub(crate) worker: usize,
    pub(crate) shared: Arc<Shared>,
    pub(crate) limits: Limits,
    pub(crate) policy: Policy,
    listeners: Vec<ListenerSpec>,
    /// `now` at construction and the Unix time it corresponds to.
    clock: (Instant, Duration),
    /// The `now` of the input being handled.
    pub(crate) now: Instant,
    pub(crate) conns: FxHashMap<ConnId, Conn>,
    pub(crate) sessions: SessionTable,
    pub(crate) router: Router,
    pub(crate) links: Vec<Link>,
    pub(crate) auth: Box<dyn Authenticator>,
    /// `[security]`, compiled.
    pub(crate) security: Security,
    /// Behaviour scores of sources and users.
    pub(crate) scores: Scores,
    /// Per source IP: rate bucket (frames before login) and connections on
    /// this worker.
    pub(crate) ip_buckets: HashMap<IpAddr, (TokenBucket, u32)>,
    /// Per user with sessions here: rate bucket.
    pub(crate) user_buckets: FxHashMap<Box<str>, TokenBucket>,
    /// Per (sender, recipient) pair of users: rate bucket of their direct
    /// messages, by a keyed hash of the pair.
    pub(crate) pair_buckets: FxHashMap<u64, TokenBucket>,
    pub(crate) pair_hasher: std::collections::hash_map::RandomState,
    /// Connections not logged in yet, by their login deadline (in order).
    prelogin: VecDeque<(Instant, ConnId)>,
    /// Bytes queued for all clients of this worker.
    out_bytes: usize,
    /// SEND_TO_* answers waiting for other workers' counts.
    pub(crate) pending_sends: FxHashMap<u64, cross::PendingSend>,
    pub(crate) next_send: u64,
    outputs: VecDeque<Output>,
    pub(crate) stats: Stats,
    /// Game-server round trips (per service, by index) and client answers.
    pub(crate) latencies: crate::stats::Latencies,
    next_session: u64,
    next_sweep: Instant,
    shutdown: Option<Shutdown>,
    /// Reused buffers.
    pub(crate) scratch: Vec<u8>,
    /// Payloads being sealed for, and opened from, encrypted connections.
    pub(crate) sealing: Vec<u8>,
    opening: Vec<u8>,
    pub(crate) targets: Vec<SessionId>,
    /// Sessions this worker handed to another on RESUME, and when: messages
    /// that were already on their way here are forwarded there.
    pub(crate) handed_over: FxHashMap<SessionId, (usize, Instant)>,
}

impl Gateway {
    /// The core of worker `worker` for a validated config. `now` and
    /// `unix_now` (time since the Unix epoch) anchor its clock: later `now`s
    /// are converted to Unix time from them.
    pub fn new(
        config: &Config,
        worker: usize,
        shared: Arc<Shared>,
        auth: Box<dyn Authenticator>,
        now: Instant,
        unix_now: Duration,
    ) -> Gateway {
        let router = Router::new(config);
        let links = config
            .services
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.servers.iter().map(move |srv| Link::new(srv.addr(), i, now)))
            .collect();
        let listeners = (0..config.listeners.len())
            .map(|i| {
                let l = &config.listeners[i];
                ListenerSpec {
                    codec: l.codec,
                    max_frame: config.max_frame(i),
                    encryption: l.encryption,
                    cipher: l.cipher.unwrap_or_default(),
                }
            })
            .collect();
        let s = &config.sessions;
        let mut core = Gateway {
            worker,
            shared,
            limits: Limits::new(config),
            policy: Policy { multi_login: s.multi_login, max_devices: s.max_devices, on_conflict: s.on_conflict },
            listeners,
            clock: (now, unix_now),
            now,
            conns: FxHashMap::default(),
            sessions: SessionTable::default(),
            router,
            links,
            auth,
            security: Security::new(config),
            scores: Scores::default(),
            ip_buckets: HashMap::new(),
            user_buckets: FxHashMap::default(),
            pair_buckets: FxHashMap::default(),
            pair_hasher: std::collections::hash_map::RandomState::new(),
            prelogin: VecDeque::new(),
            out_bytes: 0,
            pending_sends: FxHashMap::default(),
            next_send: 1,
            outputs: VecDeque::new(),
            stats: Stats::default(),
            latencies: crate::stats::Latencies {
                backend: config.services.iter().map(|s| (s.name.clone(), Default::default())).collect(),
                client_answer: Default::default(),
            },
            next_session: 1,
            next_sweep: now,
            shutdown: None,
            scratch: Vec::new(),
            sealing: Vec::new(),
            opening: Vec::new(),
            targets: Vec::new(),
            handed_over: FxHashMap::default(),
        };
        core.handle_timeout(now);
        core
    }

    // ----- getters -------------------------------------------------------

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The sessions of this worker, with their user and group indexes.
    pub fn sessions(&self) -> &SessionTable {
        &self.sessions
    }

    /// State shared with the other workers.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// This worker's index.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// Number of open client connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Number of game-server links that are up.
    pub fn links_up(&self) -> usize {
        self.links.iter().filter(|l| l.state == LinkState::Up).count()
    }

    /// Requests awaiting an answer from game servers.
    pub fn requests_in_flight(&self) -> usize {
        self.links.iter().map(|l| l.inflight.len()).sum()
    }

    /// The session carried by a connection.
    pub fn session_of(&self, conn: ConnId) -> Option<SessionId> {
        self.conns.get(&conn).map(|c| c.session)
    }

    /// Unix seconds at `now`, by the core's clock (whole seconds passed).
    pub fn unix_time(&self, now: Instant) -> u64 {
        (self.clock.1 + now.saturating_duration_since(self.clock.0)).as_secs()
    }

    /// `now` as milliseconds since the Unix epoch.
    pub fn unix_time_ms(&self, now: Instant) -> u64 {
        (self.clock.1 + now.saturating_duration_since(self.clock.0)).as_millis() as u64
    }

    /// Latency histograms: game-server round trips per service, client
    /// requests to their answers.
    pub fn latencies(&self) -> &crate::stats::Latencies {
        &self.latencies
    }

    /// Bytes queued for the clients of this worker.
    pub fn output_bytes(&self) -> usize {
        self.out_bytes
    }

    /// Whether `conn` still takes input: it is open and the core has not
    /// closed it (bytes that arrive after a close are not looked at, so the
    /// IO backend need not read them).
    pub fn takes_input(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| !c.closing)
    }

    /// Whether [`Gateway::shutdown`] was called: the IO backend stops
    /// accepting connections.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_some()
    }

    /// Whether a shutdown has told every client to go and nothing is left
    /// to send: the worker may exit.
    pub fn is_shut_down(&self) -> bool {
        self.shutdown.is_some_and(|s| s.kicked) && self.conns.is_empty()
    }

    // ----- client connection inputs ---------------------------------------

    /// A client connected on listener `listener` (index in the config).
    pub fn handle_connect(&mut self, now: Instant, conn: ConnId, listener: usize, peer: SocketAddr) {
        self.now = now;
        let spec = self.listeners[listener];
        let ip = peer.ip();
        let l = &self.limits;
        // A blocked source is refused before it costs anything more (one
        // that was kicked is on probation: `check_behaviour`).
        let banned = self.shared.is_blocked(ip, now);
        let admitted = if banned {
            Err(Reason::Banned.message())
        } else {
            self.shared.admit(ip, l.max_connections, l.max_per_ip, l.max_prelogin_per_ip)
        };
        let session = self.shared.session_base(self.worker) | self.next_session;
        self.next_session += 1;
        self.sessions.insert(Session::new(session, conn, spec.codec, now, l.session_rate.1, l.peer_rate.1));
        self.conns.insert(
            conn,
            Conn {
                session,
                codec: spec.codec,
                max_frame: spec.max_frame,
                listener,
                ip,
                admitted: admitted.is_ok(),
                logged_in: false,
                tried_login: false,
                refusals: TokenBucket::full(l.refusals.1, now),
                inbuf: Vec::new(),
                scanned: 0,
                out: Vec::new(),
                datagrams: Vec::new(),
                accounted: 0,
                queued: false,
                closing: false,
                bad_frames: 0,
                waiting: Waiting::Nothing,
                keys: None,
                handshake: None,
            },
        );
        self.stats.connections += 1;
        if let Err(why) = admitted {
            if banned {
                // A blocked source that keeps coming back scores on, so that
                // its block is renewed.
                Reason::Banned.count(&mut self.stats);
                self.send_error(conn, 0, 0, Reason::Banned.code(), why);
                self.score(ip, session, crate::security::behaviour::Event::Refusal);
            } else {
                self.stats.drop_connection_limit += 1;
                self.send_error(conn, 0, 0, ErrorCode::Throttled, why);
            }
            return self.close(conn, End::Session);
        }
        let burst = self.limits.ip_rate.1;
        self.ip_buckets.entry(ip).or_insert_with(|| (TokenBucket::full(burst, now), 0)).1 += 1;
        self.prelogin.push_back((now + self.limits.login_timeout, conn));
        if self.shutdown.is_some() {
            self.kick(conn, "gateway shutting down: reconnect to another gateway", true);
        }
    }

    /// Bytes arrived on a client connection.
    pub fn handle_data(&mut self, now: Instant, conn: ConnId, data: &[u8]) {
        self.now = now;
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if c.closing {
            return;
        }
        if c.inbuf.is_empty() {
            // Fast path: frames are parsed straight from the caller's buffer
            // and only an incomplete tail is copied.
            if let Some(used) = self.process_frames(conn, data, 0) {
                if used < data.len() {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.inbuf.extend_from_slice(&data[used..]);
                        c.scanned = data.len() - used;
                    }
                }
            }
        } else {
            let scanned = c.scanned;
            let mut buf = std::mem::take(&mut c.inbuf);
            buf.extend_from_slice(data);
            if let Some(used) = self.process_frames(conn, &buf, scanned) {
                buf.drain(..used);
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.scanned = buf.len();
                    c.inbuf = buf;
                }
            }
        }
    }

    /// One frame a client sent as a datagram (QUIC): exactly one frame of
    /// the listener's codec, framing included, handled apart from the
    /// connection's stream. Not on encrypted sessions (their frame counter
    /// follows the stream): such a datagram is dropped and counted, as is
    /// one that is not exactly one frame.
    pub fn handle_datagram(&mut self, now: Instant, conn: ConnId, frame: &[u8]) {
        self.now = now;
        let Some(c) = self.conns.get(&conn) else { return };
        if c.closing {
            return;
        }
        let max = c.max_frame;
        let whole = matches!(c.codec.framing().next_frame(frame, max), Ok(Some((_, used))) if used == frame.len());
        if c.keys.is_some() || !whole {
            self.stats.drop_datagram += 1;
            return;
        }
        self.process_frames(conn, frame, 0);
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
    /// after an [`Output::Close`]). A logged-in session waits for a RESUME.
    pub fn handle_disconnect(&mut self, now: Instant, conn: ConnId) {
        self.now = now;
        let Some(c) = self.conns.remove(&conn) else { return };
        self.out_bytes -= c.accounted;
        if c.admitted {
            self.shared.release(c.ip, c.logged_in);
            if let Some(entry) = self.ip_buckets.get_mut(&c.ip) {
                entry.1 -= 1;
                if entry.1 == 0 {
                    self.ip_buckets.remove(&c.ip);
                }
            }
        }
        if self.sessions.get(c.session).is_some_and(|s| s.conn == Some(conn)) {
            self.detach(c.session);
        }
    }

    // ----- time ------------------------------------------------------------

    /// When [`Gateway::handle_timeout`] is next due.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let links = self.links.iter().filter_map(|l| match l.state {
            LinkState::Down { retry_at } => Some(retry_at),
            LinkState::Up => Some(l.ping.map_or(l.next_ping, |(_, sent)| sent + self.limits.health_timeout)),
            LinkState::Connecting => Some(self.next_sweep),
            LinkState::Retired => None,
        });
        let shutdown = self.shutdown.filter(|s| !s.kicked).map(|s| s.kick_at);
        // Login deadlines are kept one by one, so that strangers that came
        // in a burst are not all closed in one go.
        let login = self.prelogin.front().map(|&(deadline, _)| deadline);
        links.chain([self.next_sweep]).chain(shutdown).chain(login).min()
    }

    /// Runs what is due at `now`: link reconnects and health checks, request
    /// timeouts, heartbeat deadlines, resume windows, shutdown progress.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.link_timers();
        self.expire_logins();
        if let Some(s) = self.shutdown {
            if !s.kicked && (now >= s.kick_at || self.requests_in_flight() == 0) {
                self.kick_everyone();
            }
        }
        if now < self.next_sweep {
            return;
        }
        // A sweep over all sessions a few times per deadline: O(sessions) per
        // interval and no per-frame timer work.
        let timeout = self.limits.heartbeat_timeout.min(self.limits.resume_window).min(self.limits.login_timeout);
        let interval = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        self.next_sweep = now + interval;
        self.expire_requests();
        self.expire_pending_sends();
        let (rate, burst) = self.limits.user_rate;
        self.user_buckets.retain(|_, b| !b.is_full(now, rate, burst));
        let (rate, burst) = self.limits.pair_rate;
        self.pair_buckets.retain(|_, b| !b.is_full(now, rate, burst));
        self.scores.sweep(now, self.security.behaviour.decay_per_sec);
        self.handed_over.retain(|_, (_, at)| now.saturating_duration_since(*at) < Duration::from_secs(10));
        let (heartbeat, window) = (self.limits.heartbeat_timeout, self.limits.resume_window);
        let mut idle = std::mem::take(&mut self.targets);
        idle.clear();
        idle.extend(
            self.sessions
                .iter()
                .filter(|s| match (s.conn, s.detached_at) {
                    (Some(_), _) => now.saturating_duration_since(s.last_seen) >= heartbeat,
                    (None, Some(at)) => now.saturating_duration_since(at) >= window,
                    (None, None) => true,
                })
                .map(|s| s.id),
        );
        for &sid in &idle {
            match self.sessions.get(sid).and_then(|s| s.conn) {
                Some(conn) => {
                    // No KICK: the session waits for a RESUME, and a KICK
                    // would tell the client it ended.
                    self.stats.heartbeat_timeouts += 1;
                    let message = format!("no frame for {} ms: closed", heartbeat.as_millis());
                    self.send_error(conn, 0, 0, ErrorCode::HeartbeatTimeout, &message);
                    self.close(conn, End::Detach);
                }
                None => {
                    self.stats.sessions_expired += 1;
                    self.end_session(sid);
                }
            }
        }
        self.targets = idle;
        let stale: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.waiting, Waiting::Resume(deadline) if deadline <= now))
            .map(|(id, _)| *id)
            .collect();
        for conn in stale {
            self.conns.get_mut(&conn).expect("listed").waiting = Waiting::Nothing;
            self.stats.drop_resume_failed += 1;
            self.send_error(conn, cmd::RESUME, 0, ErrorCode::ResumeFailed, "the session did not answer in time");
        }
    }

    /// Closes connections that have not logged in (or resumed) within
    /// `gateway.login_timeout_ms`, whatever they sent; one waiting for an
    /// answer (a delegated LOGIN, a RESUME on another worker — each bounded
    /// by its own timeout) is looked at again a second later.
    fn expire_logins(&mut self) {
        while let Some(&(deadline, conn)) = self.prelogin.front() {
            if deadline > self.now {
                break;
            }
            self.prelogin.pop_front();
            let Some(c) = self.conns.get(&conn).filter(|c| !c.logged_in && !c.closing) else { continue };
            if c.waiting != Waiting::Nothing {
                self.prelogin.push_back((self.now + Duration::from_secs(1), conn));
                continue;
            }
            self.stats.login_timeouts += 1;
            let message = format!("not logged in within {} ms", self.limits.login_timeout.as_millis());
            self.send_error(conn, 0, 0, ErrorCode::LoginTimeout, &message);
            self.close(conn, End::Session);
        }
    }

    /// Starts a graceful shutdown: no new connections (the IO backend stops
    /// accepting), no new requests; once requests in flight are answered (or
    /// half the deadline has passed) every client gets a KICK telling it to
    /// reconnect elsewhere and is closed after its output is flushed.
    pub fn shutdown(&mut self, now: Instant) {
        self.now = now;
        if self.shutdown.is_none() {
            self.shutdown = Some(Shutdown { kick_at: now + self.limits.shutdown_deadline / 2, kicked: false });
            self.handle_timeout(now);
        }
    }

    /// Applies the live parts of a new, validated configuration: limits,
    /// timeouts, multi-login policy, authentication, services and routes.
    /// Game servers that stay keep their links (and their requests in
    /// flight); new ones get a link; removed ones are closed (requests in
    /// flight on them are answered with BACKEND_UNAVAILABLE: drain first).
    /// Client connections are untouched.
    pub fn apply_config(&mut self, config: &Config) {
        self.limits = Limits::new(config);
        self.security = Security::new(config);
        let whitelist = &self.security.whitelist;
        for s in self.sessions.iter_mut() {
            s.role_bits = s.user.as_ref().map_or(0, |u| whitelist.role_bits(&u.role));
            s.class_buckets.clear();
        }
        let s = &config.sessions;
        self.policy = Policy { multi_login: s.multi_login, max_devices: s.max_devices, on_conflict: s.on_conflict };
        match crate::auth::from_config(config) {
            Ok(auth) => self.auth = auth,
            Err(e) => tracing::warn!("the new [auth] could not be applied, keeping the old one: {e}"),
        }
        // Map every (service, server) of the new config to a link: the old
        // link of the same service and address, a retired one, or a new one.
        let old: Vec<(String, std::net::SocketAddr)> =
            self.links.iter().map(|l| (self.router.services()[l.service].name.clone(), l.addr)).collect();
        let mut kept = vec![false; self.links.len()];
        let now = self.now;
        let links = &mut self.links;
        let router = Router::with_links(config, |service, addr| {
            let name = &config.services[service].name;
            let found = old.iter().enumerate().position(|(i, (n, a))| !kept[i] && n == name && *a == addr);
            match found {
                Some(i) => {
                    kept[i] = true;
                    links[i].service = service;
                    if links[i].state == LinkState::Retired {
                        links[i].state = LinkState::Down { retry_at: now };
                        links[i].drained = false;
                    }
                    i
                }
                None => {
                    links.push(Link::new(addr, service, now));
                    kept.push(true);
                    links.len() - 1
                }
            }
        });
        self.router = router;
        for (id, keep) in kept.into_iter().enumerate() {
            if !keep && self.links[id].state != LinkState::Retired {
                self.link_down(id, "was removed from the configuration");
                self.links[id].state = LinkState::Retired;
                self.links[id].drained = false;
            }
        }
        let mut latencies: Vec<(String, crate::stats::Histogram)> =
            config.services.iter().map(|s| (s.name.clone(), Default::default())).collect();
        for (name, h) in std::mem::take(&mut self.latencies.backend) {
            if let Some(slot) = latencies.iter_mut().find(|(n, _)| *n == name) {
                slot.1 = h;
            }
        }
        self.latencies.backend = latencies;
        self.link_timers();
    }

    fn kick_everyone(&mut self) {
        if let Some(s) = &mut self.shutdown {
            s.kicked = true;
        }
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            self.kick(conn, "gateway shutting down: reconnect to another gateway", true);
        }
        let detached: Vec<SessionId> = self.sessions.iter().map(|s| s.id).collect();
        for sid in detached {
            self.end_session(sid);
        }
    }

    // ----- outputs ---------------------------------------------------------

    /// The next thing for the IO backend to do.
    #[must_use]
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

    /// Hands each unreliable frame waiting for `conn` to `send` (a whole
    /// frame of its codec, framing included: one datagram each), for a
    /// transport that sends datagrams; none is left afterwards.
    pub fn take_datagrams(&mut self, conn: ConnId, mut send: impl FnMut(&[u8])) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let framing = c.codec.framing();
        let mut pos = 0;
        while let Ok(Some((_, used))) = framing.next_frame(&c.datagrams[pos..], usize::MAX) {
            send(&c.datagrams[pos..pos + used]);
            pos += used;
        }
        c.datagrams.clear();
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

    /// Splits frames off `buf` (whose first `scanned` bytes hold no line
    /// end) and runs each through the path. Returns the bytes consumed, or
    /// `None` once the connection is closing.
    fn process_frames(&mut self, conn: ConnId, buf: &[u8], mut scanned: usize) -> Option<usize> {
        let c = self.conns.get(&conn)?;
        // A stranger's frames are a LOGIN or a RESUME at most: small.
        let max = if c.logged_in { c.max_frame } else { c.max_frame.min(self.limits.max_frame_before_login) };
        let (session, codec, ip) = (c.session, c.codec, c.ip);
        let chain = self.security.chains[c.listener];
        if let Some(s) = self.sessions.get_mut(session) {
            s.last_seen = self.now;
        }
        let framing = codec.framing();
        let mut pos = 0;
        loop {
            match framing.next_frame_after(&buf[pos..], max, scanned) {
                Ok(Some((range, used))) => {
                    let frame = &buf[pos + range.start..pos + range.end];
                    pos += used;
                    scanned = 0;
                    // Any frame may close the connection (a kick, a slow
                    // consumer, a replay overflow): nothing after it counts.
                    if !self.on_frame(conn, (session, codec, ip, chain), frame)
                        || self.conns.get(&conn).is_none_or(|c| c.closing)
                    {
                        return None;
                    }
                }
                Ok(None) => return Some(pos),
                Err(FrameError::TooLarge { len, max }) => {
                    let detail = format!("frame of {len} bytes exceeds the maximum of {max}");
                    self.apply_verdict(conn, (0, 0), Verdict::Close(Reason::FrameTooLarge), Some(&detail));
                    return None;
                }
            }
        }
    }

    /// One frame through decode → decryption → the check stage →
    /// framework or route. Returns whether the connection is still open.
    fn on_frame(
        &mut self,
        conn: ConnId,
        ctx: (SessionId, Codec, IpAddr, crate::security::Chain),
        frame: &[u8],
    ) -> bool {
        let codec = ctx.1;
        let env = match codec.decode(frame) {
            Ok(env) => env,
            Err(e) => {
                let detail = format_args!("undecodable {codec} frame: {e}");
                return self.bad_frame(conn, (0, 0), Reason::BadFrame, &detail);
            }
        };
        self.stats.frames_in += 1;
        if !env.is_encrypted() && !self.is_encrypted(conn) {
            return self.on_envelope(conn, ctx, &env);
        }
        let mut plain = std::mem::take(&mut self.opening);
        let open = match self.open_frame(conn, &env, &mut plain) {
            Ok(()) => {
                let env = Envelope { payload: std::borrow::Cow::Borrowed(&plain[..]), ..env };
                self.on_envelope(conn, ctx, &env)
            }
            Err((reason, detail)) => {
                self.apply_verdict(conn, (env.cmd, env.seq), Verdict::Close(reason), Some(&detail));
                false
            }
        };
        self.opening = plain;
        open
    }

    /// A decoded (and opened) frame through the check stage, then the
    /// framework or the route. Returns whether the connection is still open.
    fn on_envelope(
        &mut self,
        conn: ConnId,
        (session, codec, ip, chain): (SessionId, Codec, IpAddr, crate::security::Chain),
        env: &Envelope<'_>,
    ) -> bool {
        let verdict = self.check_frame(chain, &Frame { conn, session, ip, env });
        if verdict != Verdict::Respond(Reason::Throttled) && env.ack != 0 {
            if let Some(s) = self.sessions.get_mut(session) {
                s.replay.ack(env.ack.min(s.replay.last_seq()));
            }
        }
        match verdict {
            Verdict::Pass => {}
            Verdict::Respond(Reason::BadEnvelope) => {
                return self.bad_frame(conn, (env.cmd, env.seq), Reason::BadEnvelope, &Reason::BadEnvelope.message());
            }
            _ => {
                self.apply_verdict(conn, (env.cmd, env.seq), verdict, None);
                return !matches!(verdict, Verdict::Close(_) | Verdict::Escalate(_));
            }
        }
        if cmd::is_framework(env.cmd) {
            return self.on_framework(conn, session, codec, env);
        }
        self.on_business(conn, session, env);
        true
    }

    // ----- connection and session lifecycle ------------------------------------

    /// Closes a connection after its pending output; `end` says what
    /// becomes of its session.
    pub(crate) fn close(&mut self, conn: ConnId, end: End) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if c.closing {
            return;
        }
        c.closing = true;
        let session = c.session;
        self.outputs.push_back(Output::Close(conn));
        if self.sessions.get(session).is_some_and(|s| s.conn == Some(conn)) {
            match end {
                End::Session => self.end_session(session),
                End::Detach => self.detach(session),
            }
        }
    }

    /// A session lost its connection: a logged-in one waits for a RESUME
    /// within the window; an anonymous one ends.
    fn detach(&mut self, session: SessionId) {
        let Some(s) = self.sessions.get_mut(session) else { return };
        if s.user.is_none() || self.shutdown.is_some() {
            return self.end_session(session);
        }
        s.conn = None;
        s.detached_at = Some(self.now);
        self.stats.sessions_detached += 1;
        let user = s.user_id().expect("logged in").to_owned();
        self.shared.set_user_session(&user, session, self.worker, false);
    }

    /// Ends a session: leaves its groups, leaves the user index, tells the
    /// game servers it used.
    pub(crate) fn end_session(&mut self, session: SessionId) {
        let Some(s) = self.take_session(session) else { return };
        if let Some(user) = s.user_id() {
            self.shared.logout(user, session);
            self.event(crate::admin::EventKind::Logout, session, user, "", "");
        }
        self.notify_links(&s, true);
    }

    /// Removes a session from this worker (to end it or to move it),
    /// updating the shared group counts.
    pub(crate) fn take_session(&mut self, session: SessionId) -> Option<Session> {
        let s = self.sessions.remove(session)?;
        for g in &s.groups {
            self.shared.group_member(g, self.worker, false);
        }
        Some(s)
    }

    /// `conn` logged in or resumed: from now on the limits of players apply
    /// to it, not those of strangers.
    pub(crate) fn logged_in(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn).filter(|c| !c.logged_in) else { return };
        c.logged_in = true;
        c.bad_frames = 0;
        if c.admitted {
            self.shared.logged_in(c.ip);
        }
    }

    fn queue_transmit(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            if !c.queued {
                c.queued = true;
                self.outputs.push_back(Output::Transmit(conn));
            }
        }
    }

    pub(crate) fn queue_link(&mut self, link: LinkId) {
        let l = &mut self.links[link];
        if !l.queued {
            l.queued = true;
            self.outputs.push_back(Output::TransmitLink(link));
        }
    }

    /// The encryption settings of `conn`'s listener.
    pub(crate) fn encryption_of(&self, conn: ConnId) -> (Encryption, Cipher) {
        self.conns.get(&conn).map_or((Encryption::Off, Cipher::default()), |c| {
            let spec = &self.listeners[c.listener];
            (spec.encryption, spec.cipher)
        })
    }

    pub(crate) fn push_output(&mut self, out: Output) {
        self.outputs.push_back(out);
    }
}

/// What closing a connection does to its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// End it (logout, kick, protocol violation).
    Session,
    /// Keep it for a RESUME if it is logged in (the connection failed).
    Detach,
}

/// Drops the first `n` bytes of a buffer.
fn drain_front(buf: &mut Vec<u8>, n: usize) {
    if n >= buf.len() {
        buf.clear();
        if buf.capacity() > 64 * 1024 {
            *buf = Vec::new();
        }
    } else {
        buf.drain(..n);
    }
}

#[cfg(test)]
mod tests;
