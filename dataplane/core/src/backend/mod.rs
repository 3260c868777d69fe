//! Backend links: one TCP connection from a worker to each game server,
//! multiplexing every session (`schema/link.proto`). This module holds a
//! link's state in the core — connection state, health checks, requests
//! awaiting an answer; the IO backend owns the socket.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::conn::ConnId;
use crate::session::SessionId;

/// Largest frame accepted from a game server.
pub const MAX_LINK_FRAME: usize = 16 << 20;

/// Connection state of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// A connect is under way.
    Connecting,
    /// Connected: requests may be sent.
    Up,
    /// Down; a reconnect is due at `retry_at`.
    Down {
        /// When to try again.
        retry_at: Instant,
    },
    /// Removed from the configuration: never used or reconnected again
    /// (its id stays reserved, so sessions' sticky links stay valid).
    Retired,
}

/// What a request awaiting an answer was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// A client's business command; `unreliable`: it came as a datagram
    /// and its answer goes back as one.
    Business {
        /// It came as a datagram.
        unreliable: bool,
    },
    /// A delegated LOGIN from this connection.
    Login(ConnId),
}

/// A request sent and not yet answered.
#[derive(Debug, Clone, Copy)]
pub struct InFlight {
    /// The session that sent it.
    pub session: SessionId,
    /// Its command.
    pub cmd: u32,
    /// The client's sequence number.
    pub seq: u32,
    /// When it times out.
    pub deadline: Instant,
    /// What it is for.
    pub kind: Pending,
    /// When it was sent (for the round-trip histogram).
    pub sent: Instant,
}

/// One game-server link.
#[derive(Debug)]
pub struct Link {
    /// Game-server address.
    pub addr: SocketAddr,
    /// Index of its service in the router.
    pub service: usize,
    /// Connection state.
    pub state: LinkState,
    /// The game server announced it is draining.
    pub draining: bool,
    /// An operator drained it: no new sessions.
    pub drained: bool,
    /// Encoded frames not yet written to the socket.
    pub out: Vec<u8>,
    /// Bytes received that do not yet form a whole frame.
    pub inbuf: Vec<u8>,
    /// A `TransmitLink` output is pending.
    pub queued: bool,
    /// Requests awaiting an answer, by request id.
    pub inflight: FxHashMap<u64, InFlight>,
    /// The next request id.
    pub next_request: u64,
    /// When the next health-check ping is due.
    pub next_ping: Instant,
    /// A ping awaiting its pong: `(nonce, sent)`.
    pub ping: Option<(u64, Instant)>,
    /// Consecutive failures, for the reconnect backoff.
    pub failures: u32,
    /// Sessions that ended while this link was down: the game server hears
    /// of them when it is back (at most [`MAX_CLOSED_WHILE_DOWN`]).
    pub closed_while_down: Vec<(u64, Box<str>)>,
}

/// Sessions remembered per link while it is down.
pub const MAX_CLOSED_WHILE_DOWN: usize = 65_536;

impl Link {
    /// A link that has not been connected yet.
    pub fn new(addr: SocketAddr, service: usize, now: Instant) -> Self {
        Link {
            addr,
            service,
            state: LinkState::Down { retry_at: now },
            draining: false,
            drained: false,
            out: Vec::new(),
            inbuf: Vec::new(),
            queued: false,
            inflight: FxHashMap::default(),
            next_request: 1,
            next_ping: now,
            ping: None,
            failures: 0,
            closed_while_down: Vec::new(),
        }
    }

    /// Whether a request may be queued on it: up and not backed up.
    pub fn accepts(&self, max_outbound: usize) -> bool {
        self.state == LinkState::Up && self.out.len() < max_outbound
    }

    /// Whether a new session may be given to it: accepts and not draining.
    pub fn accepts_new(&self, max_outbound: usize) -> bool {
        self.accepts(max_outbound) && !self.draining && !self.drained
    }

    /// The reconnect delay after the current run of failures: doubles from
    /// `base` up to `max`.
    pub fn backoff(&self, base: Duration, max: Duration) -> Duration {
        base.saturating_mul(1 << self.failures.min(16)).min(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut l = Link::new("127.0.0.1:1".parse().unwrap(), 0, Instant::now());
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<_> = (0..7)
            .map(|f| {
                l.failures = f;
                l.backoff(base, max).as_millis()
            })
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000]);
        l.failures = 1000;
        assert_eq!(l.backoff(base, max), max);
    }
}
