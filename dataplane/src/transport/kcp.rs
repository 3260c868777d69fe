//! KCP over UDP, sans-IO: the [`Transport::Kcp`] connections of every
//! `transport = "kcp"` listener of one worker.
//!
//! # Wire
//!
//! Every datagram starts with a conversation id (`u32` little-endian, KCP's
//! own `conv` field). Conversation 0 carries the control packets of
//! [`portcullis_proto::kcp`]: `HELLO` → `COOKIE` → `CONNECT` → `ACCEPT`,
//! and `CLOSE` both ways (layouts in `proto/PROTOCOL.md`, "KCP transport").
//!
//! - A `HELLO` is answered with a `COOKIE` and nothing is remembered: the
//!   conversation id and the cookie are HMAC-SHA256 values (a key drawn at
//!   random for each transport) over the listener, the peer's address and
//!   port and a 10-second time bucket, so a flood of spoofed `HELLO`s costs
//!   two HMACs each and no memory ([`DatagramStats::stateless_replies`]).
//!   The `COOKIE` (40 bytes) is smaller than the `HELLO` (64): no
//!   amplification.
//! - A `CONNECT` whose cookie verifies for its sender, its conversation and
//!   the current or previous bucket (10 to 20 seconds of validity) opens
//!   the connection, tells the core ([`Gateway::handle_connect`]) and is
//!   answered with `ACCEPT` (again for a repeated `CONNECT`). Its
//!   conversation id was free when the `COOKIE` was made; if another
//!   client took it since (odds of 2^-32 per pair), the `CONNECT` is
//!   answered with `CLOSE` and the client starts over. A copy of a
//!   `CONNECT` that the network delivers after the connection closed, still
//!   within the cookie's validity, opens a connection nobody uses; it is
//!   closed as a dead peer after `dead_after_ms`.
//! - KCP segments are taken only for a known conversation from the
//!   address that opened it; anything else is dropped and counted
//!   ([`DatagramStats::dropped`]).
//!
//! After `ACCEPT` the KCP stream carries the listener codec's framed bytes
//! exactly as TCP would.
//!
//! # Timers
//!
//! Each connection keeps the time it next wants service; a binary heap
//! holds `(time, conversation)` with lazy deletion (an entry whose time is
//! not the connection's current one is skipped). A connection with nothing
//! in flight and no ACK to send sleeps until its dead-peer deadline, so
//! idle connections cost nothing; a busy one is serviced at KCP's
//! [`Kcp::check`] time (at most the listener's `interval_ms`). A peer
//! silent for `dead_after_ms`, or a dead link — a segment retransmitted
//! too often (KCP's own test), or data in flight with no ACK progress for
//! `dead_after_ms` (KCP's test alone takes minutes with its growing RTO) —
//! closes the connection: `CLOSE` to the peer and
//! [`Gateway::handle_disconnect`] to the core.
//!
//! # How a backend drives it
//!
//! ```text
//! let mut kcp = KcpTransport::new(&config, now)?;
//! loop {
//!     // 1. wait on the UDP sockets of listeners_of(&config, Kcp) until
//!     //    kcp.poll_timeout() (with the core's own timeout);
//!     // 2. every datagram that arrived:
//!     kcp.handle_datagram(now, &mut core, listener, local, from, bytes);
//!     // 3. timers:
//!     if kcp.poll_timeout().is_some_and(|t| t <= now) { kcp.handle_timeout(now, &mut core) }
//!     // 4. the core's outputs: Dispatcher::new(..).with(Transport::Kcp, &mut kcp).flush(&mut core)
//!     //    (transmit / close as for TCP);
//!     // 5. send what is queued:
//!     while let Some(t) = kcp.poll_transmit(now, &mut buf) {
//!         socket_of(t.listener).send_to(&buf[..t.len], t.to);
//!     }
//! }
//! ```
//!
//! Output datagrams are queued in one buffer per transport (no allocation
//! per datagram once it has grown); step 5 must run after steps 2 to 4.
//! `dataplane/tests/kcp_sdk.rs` is such a loop on one kernel UDP socket.
//!
//! Each transport draws its own cookie key and numbers its own
//! conversations, so every datagram from one client address and port must
//! reach the same worker (SO_REUSEPORT's hash of the 4-tuple and the NIC's
//! RSS queues both do that); a client moved to another worker mid-way
//! fails its handshake or has its segments dropped, and reconnects.
//! [`ClientTransport::transmit`] takes no `now`: it uses the latest `now`
//! any other call gave.
//!
//! KCP's output writer appends to a staging buffer of the worker thread,
//! which this transport moves into its queue right after every call into
//! KCP; the staging buffer is empty between calls, so the transport stays
//! `Send` and needs no lock.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use kcp::Kcp;
use portcullis_core::config::{Config, KcpConfig, ListenerTransport};
use portcullis_core::{ConnId, Gateway, Transport};
use portcullis_proto::kcp::{self as wire, Control, CONTROL_CONV, COOKIE_LEN};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use rustc_hash::FxHashMap;

use super::{DatagramStats, DatagramTransport, Transmit};
use crate::io::dispatch::ClientTransport;

/// Length of the time buckets of cookies, ms. A cookie is good in its
/// bucket and the next.
pub const COOKIE_BUCKET_MS: u64 = 10_000;

/// Conversation ids tried for one `HELLO` before giving up (each one taken
/// by a live connection, or 0).
const CONV_ATTEMPTS: u8 = 8;

/// Segments KCP takes in one `send` (it refuses 128 or more).
const SEGMENTS_PER_SEND: usize = 127;

/// Bytes of the cookie's MAC (the rest is the bucket).
const TAG_LEN: usize = COOKIE_LEN - 4;

thread_local! {
    /// Where KCP's output writer puts datagrams until the transport moves
    /// them into its queue (see the module doc).
    static STAGING: RefCell<Staging> = RefCell::new(Staging::default());
}

#[derive(Default)]
struct Staging {
    bytes: Vec<u8>,
    /// End offsets of the datagrams in `bytes`.
    ends: Vec<usize>,
}

/// KCP's output: one `write` per datagram (KCP calls `write_all` with one
/// datagram at a time, and this never writes short).
struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        STAGING.with_borrow_mut(|s| {
            s.bytes.extend_from_slice(buf);
            s.ends.push(s.bytes.len());
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A datagram waiting in [`TxQueue`].
struct Queued {
    listener: usize,
    to: SocketAddr,
    start: usize,
    len: usize,
}

/// Datagrams to send, in one growing buffer.
#[derive(Default)]
struct TxQueue {
    bytes: Vec<u8>,
    queue: VecDeque<Queued>,
}

impl TxQueue {
    /// Moves what KCP wrote into the queue, to `to` from `listener`.
    fn take_staged(&mut self, listener: usize, to: SocketAddr) {
        STAGING.with_borrow_mut(|s| {
            let mut start = 0;
            for &end in &s.ends {
                let at = self.bytes.len();
                self.bytes.extend_from_slice(&s.bytes[start..end]);
                self.queue.push_back(Queued { listener, to, start: at, len: end - start });
                start = end;
            }
            s.bytes.clear();
            s.ends.clear();
        });
    }

    fn control(&mut self, listener: usize, to: SocketAddr, packet: &Control) {
        let start = self.bytes.len();
        packet.encode(&mut self.bytes);
        self.queue.push_back(Queued { listener, to, start, len: packet.len() });
    }
}

/// Why a connection ended, for [`KcpCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The peer sent `CLOSE`.
    PeerClosed,
    /// Nothing heard for `dead_after_ms`.
    DeadPeer,
    /// KCP gave up retransmitting.
    DeadLink,
    /// The core closed it and everything queued was acknowledged (or the
    /// linger ran out).
    Closed,
}

/// Counters of the KCP transport beyond [`DatagramStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KcpCounters {
    /// Connections opened (valid `CONNECT`).
    pub opened: u64,
    /// Connections the peer closed with `CLOSE`.
    pub closed_by_peer: u64,
    /// Connections closed because the peer was silent for `dead_after_ms`.
    pub dead_peers: u64,
    /// Connections closed because KCP gave up retransmitting.
    pub dead_links: u64,
    /// `CONNECT`s with a cookie that is forged, expired or for another
    /// address (also in [`DatagramStats::dropped`]).
    pub bad_cookies: u64,
}

struct Conn {
    id: ConnId,
    listener: usize,
    peer: SocketAddr,
    nonce: u64,
    kcp: Kcp<Sink>,
    /// Last time a valid segment arrived, ms.
    last_heard: u64,
    /// Last time the send queue was empty or shrank (an ACK), ms: a peer
    /// that acknowledges nothing for `dead_after_ms` is a dead link too.
    last_progress: u64,
    /// Time of this connection's live timer entry, `u64::MAX` for none.
    wake_at: u64,
    /// Input arrived since the last flush (ACKs to send).
    acks_pending: bool,
    /// The core has more to send than the window took.
    blocked: bool,
    /// The core closed it: its queued bytes are being delivered until this
    /// time, ms; then `CLOSE`.
    closing: Option<u64>,
}

/// The KCP transport of one worker: every `transport = "kcp"` listener.
/// See the module doc for the wire and how a backend drives it.
pub struct KcpTransport {
    start: Instant,
    /// Latest `now` seen, ms since `start`.
    now_ms: u64,
    key: hmac::Key,
    /// Tuning of each listener of the config, `None` for those that are not
    /// KCP.
    listeners: Vec<Option<KcpConfig>>,
    conns: FxHashMap<u32, Conn>,
    timers: BinaryHeap<Reverse<(u64, u32)>>,
    tx: TxQueue,
    rx: Vec<u8>,
    generation: u32,
    accepting: bool,
    open: u64,
    stats: DatagramStats,
    counters: KcpCounters,
}

fn kcp_time(ms: u64) -> u32 {
    // KCP's clock is 32-bit milliseconds and compares with wrap-around.
    ms as u32
}

/// Constant-time equality of two byte strings of the same length.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl KcpTransport {
    /// The transport for the KCP listeners of `config` (there may be none:
    /// then every datagram is dropped).
    pub fn new(config: &Config, now: Instant) -> io::Result<KcpTransport> {
        let mut key = [0; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| io::Error::other("no randomness from the OS for the KCP cookie key"))?;
        let listeners =
            config.listeners.iter().map(|l| (l.transport == ListenerTransport::Kcp).then(|| l.kcp())).collect();
        Ok(KcpTransport {
            start: now,
            now_ms: 0,
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
            listeners,
            conns: FxHashMap::default(),
            timers: BinaryHeap::new(),
            tx: TxQueue::default(),
            rx: vec![0; 64 * 1024],
            generation: 0,
            accepting: true,
            open: 0,
            stats: DatagramStats::default(),
            counters: KcpCounters::default(),
        })
    }

    /// Whether listener `i` of the config is one of this transport's.
    pub fn serves(&self, listener: usize) -> bool {
        self.listeners.get(listener).is_some_and(Option::is_some)
    }

    /// Counters beyond [`DatagramStats`].
    pub fn counters(&self) -> KcpCounters {
        self.counters.clone()
    }

    /// The peer address of `conn`, while the transport has it.
    pub fn peer(&self, conn: ConnId) -> Option<SocketAddr> {
        self.conn(conn).map(|c| c.peer)
    }

    fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.conns.get(&(id.local() as u32)).filter(|c| c.id == id)
    }

    fn ms(&mut self, now: Instant) -> u64 {
        let ms = now.saturating_duration_since(self.start).as_millis() as u64;
        self.now_ms = self.now_ms.max(ms);
        self.now_ms
    }

    fn sign(&self, what: &[u8], listener: usize, peer: SocketAddr, fields: &[&[u8]]) -> hmac::Tag {
        let ip = match peer.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(what);
        ctx.update(&[wire::VERSION]);
        ctx.update(&(listener as u32).to_le_bytes());
        ctx.update(&ip);
        ctx.update(&peer.port().to_le_bytes());
        for f in fields {
            ctx.update(f);
        }
        ctx.sign()
    }

    /// The MAC of a cookie: binds listener, address, conversation, bucket.
    fn tag(&self, listener: usize, peer: SocketAddr, conv: u32, bucket: u32) -> [u8; TAG_LEN] {
        let tag = self.sign(b"portcullis kcp cookie", listener, peer, &[&conv.to_le_bytes(), &bucket.to_le_bytes()]);
        let mut out = [0; TAG_LEN];
        out.copy_from_slice(&tag.as_ref()[..TAG_LEN]);
        out
    }

    /// An unguessable conversation id for a `HELLO`, free at this moment.
    fn pick_conv(&self, listener: usize, peer: SocketAddr, nonce: u64, bucket: u32) -> Option<u32> {
        (0..CONV_ATTEMPTS).find_map(|attempt| {
            let tag = self.sign(
                b"portcullis kcp conv",
                listener,
                peer,
                &[&nonce.to_le_bytes(), &bucket.to_le_bytes(), &[attempt]],
            );
            let conv = u32::from_le_bytes([tag.as_ref()[0], tag.as_ref()[1], tag.as_ref()[2], tag.as_ref()[3]]);
            (conv != CONTROL_CONV && !self.conns.contains_key(&conv)).then_some(conv)
        })
    }

    fn drop_datagram(&mut self) {
        self.stats.dropped += 1;
    }

    fn handle_control(&mut self, now: Instant, core: &mut Gateway, listener: usize, from: SocketAddr, data: &[u8]) {
        let Ok(packet) = Control::decode(data) else { return self.drop_datagram() };
        let bucket = (self.now_ms / COOKIE_BUCKET_MS) as u32;
        match packet {
            Control::Hello { nonce } => {
                if !self.accepting {
                    return self.drop_datagram();
                }
                let Some(conv) = self.pick_conv(listener, from, nonce, bucket) else {
                    return self.drop_datagram();
                };
                let mut cookie = [0; COOKIE_LEN];
                cookie[..4].copy_from_slice(&bucket.to_le_bytes());
                cookie[4..].copy_from_slice(&self.tag(listener, from, conv, bucket));
                self.tx.control(listener, from, &Control::Cookie { nonce, conv, cookie });
                self.stats.stateless_replies += 1;
            }
            Control::Connect { nonce, conv, cookie } => {
                if let Some(c) = self.conns.get(&conv) {
                    if c.peer == from && c.listener == listener && c.closing.is_none() {
                        // A repeated CONNECT (its ACCEPT was lost): answer again.
                        let nonce = c.nonce;
                        return self.tx.control(listener, from, &Control::Accept { nonce, conv });
                    }
                }
                if !self.accepting {
                    return self.drop_datagram();
                }
                let issued = u32::from_le_bytes([cookie[0], cookie[1], cookie[2], cookie[3]]);
                let fresh = issued == bucket || issued.wrapping_add(1) == bucket;
                if !fresh || !same(&cookie[4..], &self.tag(listener, from, conv, issued)) {
                    self.counters.bad_cookies += 1;
                    return self.drop_datagram();
                }
                if self.conns.contains_key(&conv) {
                    // Another client took this id between its COOKIE and this
                    // CONNECT (or it is closing): refused, the client starts over.
                    self.tx.control(listener, from, &Control::Close { conv });
                    return self.drop_datagram();
                }
                self.open_conn(now, core, listener, from, nonce, conv);
            }
            Control::Close { conv } => match self.conns.get(&conv) {
                Some(c) if c.peer == from && c.listener == listener => self.end(now, core, conv, End::PeerClosed),
                _ => self.drop_datagram(),
            },
            // Only the gateway sends these.
            Control::Cookie { .. } | Control::Accept { .. } => self.drop_datagram(),
        }
    }

    fn open_conn(
        &mut self,
        now: Instant,
        core: &mut Gateway,
        listener: usize,
        peer: SocketAddr,
        nonce: u64,
        conv: u32,
    ) {
        let Some(Some(cfg)) = self.listeners.get(listener) else { return self.drop_datagram() };
        let mut kcp = Kcp::new_stream(conv, Sink);
        kcp.set_nodelay(cfg.nodelay, cfg.interval_ms as i32, cfg.resend as i32, cfg.no_congestion);
        kcp.set_wndsize(cfg.window, cfg.window);
        // The config allows 64..=1472; KCP needs at least 50.
        if kcp.set_mtu(cfg.mtu).is_err() {
            return self.drop_datagram();
        }
        let now_ms = self.now_ms;
        // The first update starts KCP's clock; nothing is queued, so it
        // writes nothing.
        let _ = kcp.update(kcp_time(now_ms));
        self.tx.take_staged(listener, peer);
        self.generation = self.generation.wrapping_add(1);
        let local = (u64::from(self.generation & 0x00ff_ffff) << 32) | u64::from(conv);
        let id = ConnId::new(Transport::Kcp, local);
        let dead_at = now_ms + cfg.dead_after_ms;
        self.conns.insert(
            conv,
            Conn {
                id,
                listener,
                peer,
                nonce,
                kcp,
                last_heard: now_ms,
                last_progress: now_ms,
                wake_at: u64::MAX,
                acks_pending: false,
                blocked: false,
                closing: None,
            },
        );
        self.schedule(conv, dead_at);
        self.open += 1;
        self.counters.opened += 1;
        self.tx.control(listener, peer, &Control::Accept { nonce, conv });
        // Refused by the core (a limit): its ERROR and close come as outputs.
        core.handle_connect(now, id, listener, peer);
    }

    /// Wants `conv` serviced at `at` (ms) at the latest.
    fn schedule(&mut self, conv: u32, at: u64) {
        if let Some(c) = self.conns.get_mut(&conv) {
            if at < c.wake_at {
                c.wake_at = at;
                self.timers.push(Reverse((at, conv)));
            }
        }
    }

    /// Schedules `conv` for its next KCP or dead-peer time.
    fn reschedule(&mut self, conv: u32) {
        let now = self.now_ms;
        let Some(c) = self.conns.get(&conv) else { return };
        let Some(Some(cfg)) = self.listeners.get(c.listener) else { return };
        let dead_at = c.last_heard + cfg.dead_after_ms;
        let at = if c.kcp.wait_snd() == 0 && !c.acks_pending {
            match c.closing {
                Some(linger) => now.min(linger),
                None => dead_at,
            }
        } else {
            let kcp_at = now + u64::from(c.kcp.check(kcp_time(now)).max(1));
            kcp_at.min(dead_at).min(c.closing.unwrap_or(u64::MAX))
        };
        self.schedule(conv, at.max(now));
    }

    /// Forgets `conv`, sends `CLOSE` unless the peer sent it, tells the core
    /// unless it closed the connection itself.
    fn end(&mut self, now: Instant, core: &mut Gateway, conv: u32, why: End) {
        let Some(c) = self.conns.remove(&conv) else { return };
        if self.conns.is_empty() {
            // Every entry left is stale.
            self.timers.clear();
        }
        match why {
            End::PeerClosed => self.counters.closed_by_peer += 1,
            End::DeadPeer => self.counters.dead_peers += 1,
            End::DeadLink => self.counters.dead_links += 1,
            End::Closed => {}
        }
        if why != End::PeerClosed {
            self.tx.control(c.listener, c.peer, &Control::Close { conv });
        }
        if c.closing.is_none() {
            self.open -= 1;
            core.handle_disconnect(now, c.id);
        }
    }

    fn handle_segments(&mut self, now: Instant, core: &mut Gateway, listener: usize, from: SocketAddr, data: &[u8]) {
        let Some(conv) = wire::conv_of(data) else { return self.drop_datagram() };
        let now_ms = self.now_ms;
        let Some(c) = self.conns.get_mut(&conv).filter(|c| c.peer == from && c.listener == listener) else {
            return self.drop_datagram();
        };
        // KCP measures RTTs against its own clock: bring it to now first.
        let _ = c.kcp.update(kcp_time(now_ms));
        let waiting = c.kcp.wait_snd();
        let ok = c.kcp.input(data).is_ok();
        if ok {
            c.last_heard = now_ms;
            c.acks_pending = true;
        }
        if c.kcp.wait_snd() < waiting {
            c.last_progress = now_ms;
        }
        let id = c.id;
        // Delivered in order to the core while it takes input (after a
        // close, read and thrown away so that the window stays open).
        while let Ok(n) = c.kcp.peeksize() {
            if n > self.rx.len() {
                self.rx.resize(n, 0);
            }
            let Ok(n) = c.kcp.recv(&mut self.rx) else { break };
            if c.closing.is_none() {
                if !core.takes_input(id) {
                    break;
                }
                core.handle_data(now, id, &self.rx[..n]);
            }
        }
        let (peer, window) = (c.peer, self.listeners[listener].as_ref().map_or(0, |l| usize::from(l.window)));
        if c.blocked && c.kcp.wait_snd() < window {
            c.blocked = false;
            core.handle_writable(id);
        }
        self.tx.take_staged(listener, peer);
        if !ok {
            self.drop_datagram();
        }
        self.reschedule(conv);
    }

    /// Services `conv` at its timer: KCP's update and flush, dead peers,
    /// the end of a close.
    fn service(&mut self, now: Instant, core: &mut Gateway, conv: u32) {
        let now_ms = self.now_ms;
        let Some(c) = self.conns.get_mut(&conv) else { return };
        let Some(Some(cfg)) = self.listeners.get(c.listener) else { return };
        let _ = c.kcp.update(kcp_time(now_ms));
        if c.acks_pending || c.kcp.wait_snd() > 0 {
            // Due retransmissions and ACKs go now, whatever KCP's own
            // flush phase (update flushes only at its interval ticks).
            let _ = c.kcp.flush();
        }
        c.acks_pending = false;
        self.tx.take_staged(c.listener, c.peer);
        let stalled = c.kcp.wait_snd() > 0 && now_ms >= c.last_progress + cfg.dead_after_ms;
        let why = if c.kcp.is_dead_link() || stalled {
            Some(End::DeadLink)
        } else if now_ms >= c.last_heard + cfg.dead_after_ms {
            Some(End::DeadPeer)
        } else {
            match c.closing {
                Some(linger) if c.kcp.wait_snd() == 0 || now_ms >= linger => Some(End::Closed),
                _ => None,
            }
        };
        match why {
            Some(why) => self.end(now, core, conv, why),
            None => self.reschedule(conv),
        }
    }

    /// Hands KCP as much of the core's output for `conv` as fits its window
    /// (all of it when `all`), and flushes.
    fn push(&mut self, core: &mut Gateway, conv: u32, all: bool) {
        let now_ms = self.now_ms;
        let Some(c) = self.conns.get_mut(&conv) else { return };
        let Some(Some(cfg)) = self.listeners.get(c.listener) else { return };
        let out = core.outbound(c.id);
        let mss = c.kcp.mss();
        let room = usize::from(cfg.window).saturating_sub(c.kcp.wait_snd()) * mss;
        let want = if all { out.len() } else { out.len().min(room) };
        if c.kcp.wait_snd() == 0 {
            c.last_progress = now_ms;
        }
        let mut taken = 0;
        while taken < want {
            let chunk = (want - taken).min(SEGMENTS_PER_SEND * mss);
            match c.kcp.send(&out[taken..taken + chunk]) {
                Ok(n) if n > 0 => taken += n,
                _ => break,
            }
        }
        c.blocked = taken < out.len();
        if taken == 0 {
            return;
        }
        let id = c.id;
        core.consume(id, taken);
        let _ = c.kcp.update(kcp_time(now_ms));
        let _ = c.kcp.flush();
        self.tx.take_staged(c.listener, c.peer);
        self.reschedule(conv);
    }

    /// Drops stale timer entries when they outnumber the connections.
    fn compact_timers(&mut self) {
        if self.timers.len() > 2 * self.conns.len() + 1024 {
            self.timers = self
                .conns
                .iter()
                .filter(|(_, c)| c.wake_at != u64::MAX)
                .map(|(&conv, c)| Reverse((c.wake_at, conv)))
                .collect();
        }
    }
}

impl ClientTransport for KcpTransport {
    fn transmit(&mut self, core: &mut Gateway, conn: ConnId) {
        if self.conn(conn).is_some_and(|c| c.closing.is_none()) {
            self.push(core, conn.local() as u32, false);
        }
    }

    fn close(&mut self, now: Instant, core: &mut Gateway, conn: ConnId) {
        self.ms(now);
        let conv = conn.local() as u32;
        if self.conn(conn).is_some_and(|c| c.closing.is_none()) {
            // Everything the core queued (an ERROR, a KICK) is delivered
            // before the CLOSE.
            self.push(core, conv, true);
            let now_ms = self.now_ms;
            if let Some(c) = self.conns.get_mut(&conv) {
                let linger = self.listeners[c.listener].as_ref().map_or(0, |l| l.dead_after_ms);
                c.closing = Some(now_ms + linger);
                c.blocked = false;
                self.open -= 1;
                if c.kcp.wait_snd() == 0 {
                    // Nothing to deliver: CLOSE at once.
                    self.end(now, core, conv, End::Closed);
                } else {
                    self.reschedule(conv);
                }
            }
        }
        core.handle_disconnect(now, conn);
    }
}

impl DatagramTransport for KcpTransport {
    fn handle_datagram(
        &mut self,
        now: Instant,
        core: &mut Gateway,
        listener: usize,
        // The listener index says which listener; one address per listener.
        _local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
    ) {
        self.stats.rx_datagrams += 1;
        self.ms(now);
        if !self.serves(listener) {
            return self.drop_datagram();
        }
        match wire::conv_of(data) {
            None => self.drop_datagram(),
            Some(CONTROL_CONV) => self.handle_control(now, core, listener, from, data),
            Some(_) => self.handle_segments(now, core, listener, from, data),
        }
    }

    fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        while let Some(q) = self.tx.queue.pop_front() {
            let fits = q.len <= buf.len();
            if fits {
                buf[..q.len].copy_from_slice(&self.tx.bytes[q.start..q.start + q.len]);
            }
            if self.tx.queue.is_empty() {
                // Drained: the buffer is reused from its start.
                self.tx.bytes.clear();
            }
            if fits {
                self.stats.tx_datagrams += 1;
                return Some(Transmit { listener: q.listener, to: q.to, len: q.len });
            }
            self.stats.dropped += 1;
        }
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| self.start + Duration::from_millis(*at))
    }

    fn handle_timeout(&mut self, now: Instant, core: &mut Gateway) {
        let now_ms = self.ms(now);
        while let Some(&Reverse((at, conv))) = self.timers.peek() {
            if at > now_ms {
                break;
            }
            self.timers.pop();
            match self.conns.get_mut(&conv) {
                Some(c) if c.wake_at == at => c.wake_at = u64::MAX,
                _ => continue,
            }
            self.service(now, core, conv);
        }
        self.compact_timers();
    }

    fn stop_accepting(&mut self) {
        self.accepting = false;
    }

    fn stats(&self) -> DatagramStats {
        DatagramStats { connections: self.open, ..self.stats.clone() }
    }
}

#[cfg(test)]
mod tests;
