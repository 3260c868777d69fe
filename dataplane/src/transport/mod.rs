//! Client transports above the IO backends, sans-IO: each takes `now` and
//! bytes (datagrams, or a TCP byte stream) and gives the core ordered
//! frames of the listener's codec, so that everything above the transport
//! is the same whatever players connect with.
//!
//! - [`DatagramTransport`]s run on UDP: QUIC ([`quic`]) and KCP ([`kcp`]).
//!   A backend owns the UDP sockets (kernel) or the frames (AF_XDP, DPDK)
//!   and hands every datagram of a UDP listener to the transport, then sends
//!   what [`DatagramTransport::poll_transmit`] gives back.
//! - WebSocket ([`websocket`]) rides on a TCP connection of either TCP
//!   transport (kernel or userspace) and changes its bytes both ways.

pub mod kcp;
pub mod quic;
pub mod tls;
pub mod websocket;

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use portcullis_core::config::{Config, ListenerTransport};
use portcullis_core::{Gateway, Transport};

use self::kcp::KcpTransport;
use self::quic::QuicTransport;
use crate::io::dispatch::{ClientTransport, Dispatcher};

/// A datagram to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Index of the listener (in the config) whose address it leaves from.
    pub listener: usize,
    /// Where it goes.
    pub to: SocketAddr,
    /// Its length at the start of the buffer handed to
    /// [`DatagramTransport::poll_transmit`].
    pub len: usize,
}

/// Counters of the datagram transports of one worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatagramStats {
    /// Datagrams handed to the transport.
    pub rx_datagrams: u64,
    /// Datagrams it gave back to send.
    pub tx_datagrams: u64,
    /// Connections open (a gauge).
    pub connections: u64,
    /// Handshake packets answered without keeping state (QUIC Retry, KCP
    /// cookie).
    pub stateless_replies: u64,
    /// Datagrams dropped: malformed, unknown connection, bad cookie.
    pub dropped: u64,
}

/// A transport of client connections over UDP datagrams, sans-IO. Its
/// connections carry the transport's tag in their [`portcullis_core::ConnId`].
pub trait DatagramTransport: ClientTransport {
    /// A datagram that arrived on UDP listener `listener` (an index into the
    /// config's listeners) from `from`; `local` is the address it was sent
    /// to.
    fn handle_datagram(
        &mut self,
        now: Instant,
        core: &mut Gateway,
        listener: usize,
        local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
    );

    /// The next datagram to send, written at the start of `buf` (at least
    /// 64 KiB); `None` when nothing is waiting.
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit>;

    /// When [`DatagramTransport::handle_timeout`] wants to run next.
    fn poll_timeout(&self) -> Option<Instant>;

    /// Runs the timers that are due (retransmissions, keep-alive, idle and
    /// dead-peer detection).
    fn handle_timeout(&mut self, now: Instant, core: &mut Gateway);

    /// Refuses new connections from now on (shutdown); existing ones go on.
    fn stop_accepting(&mut self);

    /// Its counters.
    fn stats(&self) -> DatagramStats;
}

/// The indices of the config's listeners that run `transport`.
pub fn listeners_of(config: &Config, transport: ListenerTransport) -> Vec<usize> {
    config.listeners.iter().enumerate().filter(|(_, l)| l.transport == transport).map(|(i, _)| i).collect()
}

/// Every datagram transport of one worker, as a backend drives them: each
/// datagram goes to the transport of its listener, and what any of them
/// sends comes out of one [`UdpTransports::poll_transmit`].
pub struct UdpTransports {
    /// The transport of each listener, by index (`None`: a TCP listener).
    kinds: Vec<Option<ListenerTransport>>,
    /// QUIC connections.
    pub quic: QuicTransport,
    /// KCP connections.
    pub kcp: KcpTransport,
}

impl UdpTransports {
    /// The transports of `config`'s UDP listeners for worker `worker`.
    pub fn new(config: &Config, worker: u8, now: Instant) -> io::Result<UdpTransports> {
        Ok(UdpTransports {
            kinds: config.listeners.iter().map(|l| l.transport.is_udp().then_some(l.transport)).collect(),
            quic: QuicTransport::new(config, worker, now)?,
            kcp: KcpTransport::new(config, now)?,
        })
    }

    /// `(port, listener index)` of every UDP listener.
    pub fn ports(config: &Config) -> Vec<(u16, usize)> {
        config
            .listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| l.transport.is_udp())
            .map(|(i, l)| (l.bind.port(), i))
            .collect()
    }

    /// Hands a datagram of UDP listener `listener` to its transport.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        core: &mut Gateway,
        listener: usize,
        local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
    ) {
        match self.kinds.get(listener).copied().flatten() {
            Some(ListenerTransport::Quic) => self.quic.handle_datagram(now, core, listener, local, from, data),
            Some(ListenerTransport::Kcp) => self.kcp.handle_datagram(now, core, listener, local, from, data),
            _ => {}
        }
    }

    /// The next datagram any transport sends.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        self.quic.poll_transmit(now, buf).or_else(|| self.kcp.poll_transmit(now, buf))
    }

    /// The earliest timer of any transport.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.quic.poll_timeout(), self.kcp.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs the transports' due timers.
    pub fn handle_timeout(&mut self, now: Instant, core: &mut Gateway) {
        if self.quic.poll_timeout().is_some_and(|t| t <= now) {
            self.quic.handle_timeout(now, core);
        }
        if self.kcp.poll_timeout().is_some_and(|t| t <= now) {
            self.kcp.handle_timeout(now, core);
        }
    }

    /// Refuses new connections (shutdown).
    pub fn stop_accepting(&mut self) {
        self.quic.stop_accepting();
        self.kcp.stop_accepting();
    }

    /// The transports' counters, summed.
    pub fn stats(&self) -> DatagramStats {
        let (q, k) = (self.quic.stats(), self.kcp.stats());
        DatagramStats {
            rx_datagrams: q.rx_datagrams + k.rx_datagrams,
            tx_datagrams: q.tx_datagrams + k.tx_datagrams,
            connections: q.connections + k.connections,
            stateless_replies: q.stateless_replies + k.stateless_replies,
            dropped: q.dropped + k.dropped,
        }
    }

    /// Adds the transports' counters to `stats`.
    pub fn add_stats(&self, stats: &mut crate::io::IoStats) {
        let s = self.stats();
        stats.udp_rx_datagrams = s.rx_datagrams;
        stats.udp_tx_datagrams = s.tx_datagrams;
        stats.udp_connections = s.connections;
        stats.udp_stateless_replies = s.stateless_replies;
        stats.udp_dropped = s.dropped;
    }

    /// `dispatch` with these transports as the owners of their connections.
    pub fn own<'a>(&'a mut self, dispatch: Dispatcher<'a>) -> Dispatcher<'a> {
        dispatch.with(Transport::Quic, &mut self.quic).with(Transport::Kcp, &mut self.kcp)
    }
}
