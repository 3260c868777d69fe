//! QUIC (quinn-proto, sans-IO) for the `transport = "quic"` listeners of a
//! worker: one endpoint per listener, one connection per player, and the
//! first bidirectional stream the client opens carries the listener codec's
//! frames exactly as TCP does.
//!
//! - **Connections reach the core when the handshake completes**: a
//!   handshake that never completes (a spoofed source) costs the core
//!   nothing.
//! - **Address validation**: unvalidated handshakes are accepted at up to
//!   [`UNVALIDATED_PER_SEC`] per worker; above that every new source gets
//!   a Retry (stateless, no larger than what it sent), so a spoofed Initial
//!   flood creates no state and gets no amplification.
//! - **Migration**: a client whose address changes keeps its connection
//!   (quinn validates the new path); the core keeps the session. The
//!   first byte of every connection id the gateway issues is the worker's
//!   number ([`WorkerCids`]), so that a backend can send a datagram from a
//!   new address to the worker that owns its connection.
//! - **Close**: what the core still had queued is written to the stream,
//!   the stream is finished and the connection is closed once the client
//!   acknowledged it (or after [`CLOSE_GRACE`]).
//!
//! A backend drives it through [`DatagramTransport`]: every datagram of a
//! QUIC listener into [`DatagramTransport::handle_datagram`], then
//! [`DatagramTransport::poll_transmit`] until `None`, and the timers.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use portcullis_core::config::{Config, ListenerTransport};
use portcullis_core::{ConnId, Gateway, Transport};
use quinn_proto::crypto::rustls::QuicServerConfig;
use quinn_proto::{
    ConnectionHandle, DatagramEvent, Dir, EndpointConfig, Event, ServerConfig, StreamEvent, StreamId, TransportConfig,
    VarInt,
};

use super::{listeners_of, DatagramStats, DatagramTransport, Transmit};
use crate::io::dispatch::ClientTransport;

/// The ALPN protocol a client must offer.
pub const ALPN: &[u8] = b"portcullis";

/// Handshakes from unvalidated addresses accepted per second per worker;
/// beyond that, new sources are sent a Retry first.
pub const UNVALIDATED_PER_SEC: u32 = 200;

/// How long a closing connection waits for the client to acknowledge the
/// end of its stream before the connection is closed anyway.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// A connection silent this long is gone (the client SDK keeps it alive
/// every few seconds).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Application close code of a normal close.
const CLOSE_NORMAL: u32 = 0;

/// Length of the connection ids the gateway issues.
pub const CID_LEN: usize = 8;

/// Connection ids whose first byte is the worker's number and the rest
/// random: the worker that owns a connection is known from any of its
/// packets.
pub struct WorkerCids {
    worker: u8,
    rng: ring::rand::SystemRandom,
}

impl quinn_proto::ConnectionIdGenerator for WorkerCids {
    fn generate_cid(&mut self) -> quinn_proto::ConnectionId {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; CID_LEN];
        // The OS's generator does not fail on Linux ≥ 3.17 once seeded.
        let _ = self.rng.fill(&mut bytes[1..]);
        bytes[0] = self.worker;
        quinn_proto::ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// The worker a QUIC packet is for, from the first byte of its destination
/// connection id, if the packet is long enough to carry one (a client's
/// first Initials carry an id of the client's choosing: any worker).
pub fn worker_of(packet: &[u8]) -> Option<u8> {
    let first = *packet.first()?;
    if first & 0x80 == 0 {
        // Short header: the id follows the first byte.
        packet.get(1).copied()
    } else {
        // Long header: flags, version (4), id length, id.
        (*packet.get(5)? as usize >= 1).then(|| packet.get(6).copied()).flatten()
    }
}

struct Listener {
    /// Index in the config's listeners.
    index: usize,
    endpoint: quinn_proto::Endpoint,
    server: Arc<ServerConfig>,
    /// Slot of each of the endpoint's connections, by handle.
    slots: Vec<Option<usize>>,
}

struct Conn {
    id: ConnId,
    listener: usize,
    handle: ConnectionHandle,
    quic: quinn_proto::Connection,
    stream: Option<StreamId>,
    /// The core knows the connection (handshake done, not yet gone).
    in_core: bool,
    /// The core closed it: finish the stream, then close.
    closing: Option<Instant>,
    /// What the core had queued when it closed a connection whose client
    /// had not opened its stream yet (a refusal's ERROR): written when the
    /// stream opens, within [`CLOSE_GRACE`].
    parting: Vec<u8>,
    /// Deadline registered in the timer heap.
    timer: Option<Instant>,
    /// In the queue of connections with something to send.
    queued: bool,
}

/// The QUIC listeners of one worker and their connections.
pub struct QuicTransport {
    listeners: Vec<Listener>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    generation: u32,
    /// Connections with something to send.
    dirty: VecDeque<usize>,
    /// Endpoint answers (Retry, version negotiation, refusals, resets).
    replies: VecDeque<(usize, SocketAddr, Vec<u8>)>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    accepting: bool,
    /// Token bucket of unvalidated handshakes.
    unvalidated: (f64, Instant),
    scratch: Vec<u8>,
    stats: DatagramStats,
}

/// The QUIC server config of listener `i`: its certificate (TLS 1.3, ALPN
/// [`ALPN`], no 0-RTT), the transport parameters, migration on.
fn server_config(config: &Config, i: usize) -> io::Result<Arc<ServerConfig>> {
    let l = &config.listeners[i];
    let (Some(cert), Some(key)) = (&l.tls_cert, &l.tls_key) else {
        let why = format!("listeners[{i}]: QUIC needs tls_cert and tls_key");
        return Err(io::Error::new(io::ErrorKind::InvalidInput, why));
    };
    let mut tls = super::tls::server_config(i, cert, key, super::tls::Versions::Tls13, ALPN)?;
    tls.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(tls)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("listeners[{i}].tls_cert = {cert:?}: {e}")))?;
    let mut server = ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport_config()));
    server.migration(true);
    Ok(Arc::new(server))
}

/// The transport parameters of every connection: one bidirectional stream
/// per client, datagrams on, idle timeout.
fn transport_config() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(1));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("30 s is a valid idle timeout")));
    t.datagram_receive_buffer_size(Some(256 * 1024));
    t
}

impl QuicTransport {
    /// The QUIC listeners of `config` (none if it has no `transport = "quic"`
    /// listener); their certificates are read here.
    /// `worker` is the worker's number (the first byte of its connection ids).
    pub fn new(config: &Config, worker: u8, now: Instant) -> io::Result<QuicTransport> {
        let mut listeners = Vec::new();
        let mut endpoint_config = EndpointConfig::default();
        endpoint_config.cid_generator(move || Box::new(WorkerCids { worker, rng: ring::rand::SystemRandom::new() }));
        let endpoint_config = Arc::new(endpoint_config);
        for index in listeners_of(config, ListenerTransport::Quic) {
            let server = server_config(config, index)?;
            let endpoint = quinn_proto::Endpoint::new(endpoint_config.clone(), Some(server.clone()), true, None);
            listeners.push(Listener { index, endpoint, server, slots: Vec::new() });
        }
        Ok(QuicTransport {
            listeners,
            conns: Vec::new(),
            free: Vec::new(),
            generation: 0,
            dirty: VecDeque::new(),
            replies: VecDeque::new(),
            timers: BinaryHeap::new(),
            accepting: true,
            unvalidated: (f64::from(UNVALIDATED_PER_SEC), now),
            scratch: Vec::with_capacity(64 * 1024),
            stats: DatagramStats::default(),
        })
    }

    fn slot(id: ConnId) -> usize {
        (id.local() & 0xffff_ffff) as usize
    }

    fn conn(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(Self::slot(id))?.as_mut().filter(|c| c.id == id)
    }

    /// Takes one unvalidated handshake from the bucket.
    fn take_unvalidated(&mut self, now: Instant) -> bool {
        let (tokens, at) = &mut self.unvalidated;
        let rate = f64::from(UNVALIDATED_PER_SEC);
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(rate);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// A client's first Initial: refused (shutting down), sent a Retry, or
    /// accepted; the slot of the accepted connection.
    fn new_connection(&mut self, now: Instant, l: usize, incoming: quinn_proto::Incoming) -> Option<usize> {
        let listener = &mut self.listeners[l];
        self.scratch.clear();
        if !self.accepting {
            let t = listener.endpoint.refuse(incoming, &mut self.scratch);
            self.stats.stateless_replies += 1;
            self.replies.push_back((l, t.destination, self.scratch[..t.size].to_vec()));
            return None;
        }
        if !incoming.remote_address_validated() && incoming.may_retry() && !self.take_unvalidated(now) {
            let listener = &mut self.listeners[l];
            match listener.endpoint.retry(incoming, &mut self.scratch) {
                Ok(t) => {
                    self.stats.stateless_replies += 1;
                    self.replies.push_back((l, t.destination, self.scratch[..t.size].to_vec()));
                }
                Err(e) => listener.endpoint.ignore(e.into_incoming()),
            }
            return None;
        }
        let listener = &mut self.listeners[l];
        let server = listener.server.clone();
        match listener.endpoint.accept(incoming, now, &mut self.scratch, Some(server)) {
            Ok((handle, quic)) => {
                let slot = self.free.pop().unwrap_or_else(|| {
                    self.conns.push(None);
                    self.conns.len() - 1
                });
                self.generation = self.generation.wrapping_add(1);
                let id = ConnId::new(Transport::Quic, (u64::from(self.generation) << 32) | slot as u64);
                if listener.slots.len() <= handle.0 {
                    listener.slots.resize(handle.0 + 1, None);
                }
                listener.slots[handle.0] = Some(slot);
                self.conns[slot] = Some(Conn {
                    id,
                    listener: l,
                    handle,
                    quic,
                    stream: None,
                    in_core: false,
                    closing: None,
                    parting: Vec::new(),
                    timer: None,
                    queued: false,
                });
                self.stats.connections += 1;
                Some(slot)
            }
            Err(e) => {
                if let Some(t) = e.response {
                    self.replies.push_back((l, t.destination, self.scratch[..t.size].to_vec()));
                }
                None
            }
        }
    }

    /// Queues a connection for [`DatagramTransport::poll_transmit`].
    fn queue(&mut self, slot: usize) {
        if let Some(c) = self.conns[slot].as_mut() {
            if !c.queued {
                c.queued = true;
                self.dirty.push_back(slot);
            }
        }
    }

    /// Runs a connection's events: endpoint bookkeeping, the handshake's
    /// end, its stream, loss; then queues it for sending.
    fn drive(&mut self, now: Instant, core: &mut Gateway, slot: usize) {
        let Some(c) = self.conns[slot].as_mut() else { return };
        let listener = &mut self.listeners[c.listener];
        let mut drained = false;
        while let Some(ev) = c.quic.poll_endpoint_events() {
            drained |= ev.is_drained();
            if let Some(back) = listener.endpoint.handle_event(c.handle, ev) {
                c.quic.handle_event(back);
            }
        }
        while let Some(ev) = c.quic.poll() {
            match ev {
                Event::Connected if c.closing.is_none() => {
                    c.in_core = true;
                    core.handle_connect(now, c.id, listener.index, c.quic.remote_address());
                }
                Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) if c.stream.is_none() => {
                    c.stream = c.quic.streams().accept(Dir::Bi);
                    if c.in_core {
                        core.handle_writable(c.id);
                    } else if let (Some(s), Some(_)) = (c.stream, c.closing) {
                        // Closed before the client's stream existed: what
                        // the core had to say (why), then the end.
                        let mut send = c.quic.send_stream(s);
                        let parting = std::mem::take(&mut c.parting);
                        if send.write(&parting).is_err() || send.finish().is_err() {
                            c.quic.close(now, VarInt::from_u32(CLOSE_NORMAL), Bytes::from_static(b"closed"));
                        }
                    }
                }
                Event::Stream(StreamEvent::Writable { .. }) if c.in_core => core.handle_writable(c.id),
                Event::Stream(StreamEvent::Finished { .. }) if c.closing.is_some() => {
                    c.quic.close(now, VarInt::from_u32(CLOSE_NORMAL), Bytes::from_static(b"closed"));
                }
                Event::ConnectionLost { .. } if c.in_core => {
                    c.in_core = false;
                    core.handle_disconnect(now, c.id);
                }
                Event::DatagramReceived => {
                    while let Some(frame) = c.quic.datagrams().recv() {
                        if c.in_core {
                            core.handle_datagram(now, c.id, &frame);
                        }
                    }
                }
                _ => {}
            }
        }
        if let (Some(stream), true) = (c.stream, c.in_core) {
            Self::read_stream(now, core, c, stream);
        }
        if drained {
            self.release(slot);
        } else {
            self.queue(slot);
        }
    }

    /// Hands what the client's stream holds to the core.
    fn read_stream(now: Instant, core: &mut Gateway, c: &mut Conn, stream: StreamId) {
        let mut recv = c.quic.recv_stream(stream);
        let Ok(mut chunks) = recv.read(true) else { return };
        let mut ended = false;
        while core.takes_input(c.id) {
            match chunks.next(usize::MAX) {
                Ok(Some(chunk)) => core.handle_data(now, c.id, &chunk.bytes),
                Ok(None) => {
                    ended = true;
                    break;
                }
                Err(quinn_proto::ReadError::Blocked) => break,
                Err(_) => {
                    ended = true;
                    break;
                }
            }
        }
        let _ = chunks.finalize();
        if ended {
            // The client finished or reset its stream: the connection ends.
            c.in_core = false;
            core.handle_disconnect(now, c.id);
            c.quic.close(now, VarInt::from_u32(CLOSE_NORMAL), Bytes::from_static(b"stream ended"));
        }
    }

    fn release(&mut self, slot: usize) {
        if let Some(c) = self.conns[slot].take() {
            if let Some(s) = self.listeners[c.listener].slots.get_mut(c.handle.0) {
                *s = None;
            }
            self.free.push(slot);
            self.stats.connections -= 1;
        }
    }

    /// Sends the core's unreliable frames for `c` as datagrams (dropped
    /// where the client takes none, or past the send buffer).
    fn send_datagrams(core: &mut Gateway, c: &mut Conn) {
        let quic = &mut c.quic;
        core.take_datagrams(c.id, |frame| {
            let _ = quic.datagrams().send(Bytes::copy_from_slice(frame), true);
        });
    }

    /// Writes as much of the core's output for `c` as its stream takes.
    fn write_stream(core: &mut Gateway, c: &mut Conn) -> bool {
        let Some(stream) = c.stream else { return true };
        let out = core.outbound(c.id);
        if out.is_empty() {
            return true;
        }
        match c.quic.send_stream(stream).write(out) {
            Ok(n) => {
                core.consume(c.id, n);
                true
            }
            Err(quinn_proto::WriteError::Blocked) => true,
            Err(_) => false,
        }
    }
}

impl ClientTransport for QuicTransport {
    fn transmit(&mut self, core: &mut Gateway, conn: ConnId) {
        let Some(c) = self.conn(conn) else { return };
        Self::send_datagrams(core, c);
        if !Self::write_stream(core, c) {
            c.in_core = false;
            core.handle_disconnect(Instant::now(), conn);
        }
        self.queue(Self::slot(conn));
    }

    fn close(&mut self, now: Instant, core: &mut Gateway, conn: ConnId) {
        if let Some(c) = self.conn(conn) {
            let wrote = Self::write_stream(core, c);
            c.in_core = false;
            c.closing = Some(now);
            match c.stream {
                Some(s) if wrote && c.quic.send_stream(s).finish().is_ok() => {}
                // The client has not opened its stream yet: keep what the
                // core said for it (a refusal's ERROR) until it does.
                None if !c.quic.is_closed() => c.parting = core.outbound(conn).to_vec(),
                _ => c.quic.close(now, VarInt::from_u32(CLOSE_NORMAL), Bytes::from_static(b"closed")),
            }
            self.queue(Self::slot(conn));
        }
        core.handle_disconnect(now, conn);
    }
}

impl DatagramTransport for QuicTransport {
    fn handle_datagram(
        &mut self,
        now: Instant,
        core: &mut Gateway,
        listener: usize,
        local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
    ) {
        self.stats.rx_datagrams += 1;
        let Some(l) = self.listeners.iter().position(|l| l.index == listener) else {
            self.stats.dropped += 1;
            return;
        };
        self.scratch.clear();
        let event = self.listeners[l].endpoint.handle(
            now,
            from,
            Some(local.ip()),
            None,
            BytesMut::from(data),
            &mut self.scratch,
        );
        match event {
            Some(DatagramEvent::ConnectionEvent(handle, ev)) => {
                let Some(slot) = self.listeners[l].slots.get(handle.0).copied().flatten() else { return };
                if let Some(c) = self.conns[slot].as_mut() {
                    c.quic.handle_event(ev);
                }
                self.drive(now, core, slot);
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                if let Some(slot) = self.new_connection(now, l, incoming) {
                    self.drive(now, core, slot);
                }
            }
            Some(DatagramEvent::Response(t)) => {
                self.stats.stateless_replies += 1;
                self.replies.push_back((l, t.destination, self.scratch[..t.size].to_vec()));
            }
            None => {}
        }
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some((l, to, bytes)) = self.replies.pop_front() {
            buf[..bytes.len()].copy_from_slice(&bytes);
            self.stats.tx_datagrams += 1;
            return Some(Transmit { listener: self.listeners[l].index, to, len: bytes.len() });
        }
        while let Some(&slot) = self.dirty.front() {
            let Some(c) = self.conns[slot].as_mut() else {
                self.dirty.pop_front();
                continue;
            };
            self.scratch.clear();
            if let Some(t) = c.quic.poll_transmit(now, 1, &mut self.scratch) {
                buf[..t.size].copy_from_slice(&self.scratch[..t.size]);
                self.stats.tx_datagrams += 1;
                return Some(Transmit { listener: self.listeners[c.listener].index, to: t.destination, len: t.size });
            }
            self.dirty.pop_front();
            c.queued = false;
            let grace = c.closing.filter(|_| !c.quic.is_closed()).map(|t| t + CLOSE_GRACE);
            let next = match (c.quic.poll_timeout(), grace) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(at) = next.filter(|_| next != c.timer) {
                c.timer = next;
                self.timers.push(Reverse((at, slot)));
            }
        }
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    fn handle_timeout(&mut self, now: Instant, core: &mut Gateway) {
        while let Some(&Reverse((at, slot))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(c) = self.conns[slot].as_mut() else { continue };
            if c.timer != Some(at) {
                continue; // superseded by a later deadline
            }
            c.timer = None;
            c.quic.handle_timeout(now);
            if c.closing.is_some_and(|t| now >= t + CLOSE_GRACE) && !c.quic.is_closed() {
                c.quic.close(now, VarInt::from_u32(CLOSE_NORMAL), Bytes::from_static(b"closed"));
            }
            self.drive(now, core, slot);
        }
    }

    fn stop_accepting(&mut self) {
        self.accepting = false;
    }

    fn stats(&self) -> DatagramStats {
        self.stats.clone()
    }
}
